"""The `dimba` command: LightningCLI for fit / validate / test, and a sampling `predict`.

    dimba fit --config configs/base.yaml
    dimba predict --ckpt_path runs/base/checkpoints/last.ckpt --prompt "ROMEO:"
    dimba eval --ckpt_path ... --judge_ckpt_path ... [--ar_ckpt_path ...]
    dimba bench [--ckpt_path ...] [--ar_ckpt_path ...]
"""

from __future__ import annotations

import os

# Before torch is imported (OpenMP reads it once): on a shared 2-core machine, busy-waiting OpenMP threads
# made every step several times slower (see the field notes); passive waiting costs nothing when alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging  # noqa: E402
import sys  # noqa: E402

from lightning.pytorch.cli import LightningCLI  # noqa: E402
from lightning.pytorch.utilities.exceptions import SIGTERMException  # noqa: E402

from dimba.errors import DimbaError

# Verbs outside LightningCLI: sampling and measurement need flags that no checkpoint should override.
EXTRA_VERBS = {"predict": "dimba.predict", "eval": "dimba.eval.quality", "bench": "dimba.eval.bench",
               "export": "dimba.export"}


class DimbaCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # Values that flow from data to model: the block length at parse time, the vocabulary size once
        # the data module has its tokenizer (a trained BPE can come out smaller than asked for).
        parser.link_arguments("data.seq_len", "model.init_args.seq_len")
        parser.link_arguments("data", "model.init_args.vocab_size", compute_fn=lambda data: data.vocab_size,
                              apply_on="instantiate")


def find_user_error(err: BaseException) -> DimbaError | None:
    """The DimbaError behind err, if any: jsonargparse re-raises errors of link functions as ValueError."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, DimbaError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def run_lightning(argv: list[str] | None) -> None:
    from dimba.data.datamodule import TextDataModule
    from dimba.lit_base import LanguageModelBase

    # Subclass mode: `model.class_path` picks DIMBA (dimba.lit_module.DimbaLM) or the AR baseline
    # (dimba.lit_ar.ARLM); configs/base.yaml and configs/ar.yaml set it.
    DimbaCLI(LanguageModelBase, TextDataModule, subclass_mode_model=True, args=argv,
             save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": "dimba"})


def main(argv: list[str] | None = None) -> None:
    lightning_args = argv  # None: LightningCLI reads sys.argv itself (and says so in --help)
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if argv and argv[0] in EXTRA_VERBS:
            module = __import__(EXTRA_VERBS[argv[0]], fromlist=["main"])
            module.main(argv[1:])
        else:
            run_lightning(lightning_args)
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        raise SystemExit(2) from None
    except SIGTERMException:
        print("stopped by SIGTERM (last.ckpt saved by CheckpointOnStop when configured)", file=sys.stderr)
        raise SystemExit(143) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
