"""The `dimba` command: LightningCLI for fit / validate / test, and a sampling `predict`.

    dimba fit --config configs/base.yaml
    dimba predict --ckpt_path runs/base/checkpoints/last.ckpt --prompt "ROMEO:"
"""

from __future__ import annotations

import logging
import os
import sys

from lightning.pytorch.cli import LightningCLI

from dimba.errors import DimbaError


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
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see NOTES: busy-waiting threads on shared CPUs
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if argv and argv[0] == "predict":
            from dimba.predict import main as predict_main
            predict_main(argv[1:])
        else:
            run_lightning(lightning_args)
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
