"""The `dimba` command.

    dimba fit --config configs/base.yaml                        (LightningCLI: also validate, test)
    dimba predict --ckpt_path runs/base/checkpoints/last.ckpt --prompt "ROMEO:"
    dimba eval --ckpt_path ... --judge_ckpt_path ... [--ar_ckpt_path ...]
    dimba bench [--ckpt_path ...] [--ar_ckpt_path ...]
    dimba export --ckpt_path ... --out_dir ...
"""

from __future__ import annotations

import os

# Before torch is imported (OpenMP reads it once): on a shared 2-core machine, busy-waiting OpenMP threads
# made every step several times slower; passive waiting costs nothing when alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import importlib  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

from dimba.errors import DimbaError  # noqa: E402

# Verbs outside LightningCLI: sampling and measurement need flags that no checkpoint should override.
EXTRA_VERBS = {"predict": "dimba.cli.predict", "eval": "dimba.cli.evaluate", "bench": "dimba.cli.bench",
               "export": "dimba.cli.export"}


def find_user_error(err: BaseException) -> DimbaError | None:
    """The DimbaError behind err, if any: jsonargparse re-raises errors of link functions as ValueError."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, DimbaError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def main(argv: list[str] | None = None) -> None:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    lightning_args = argv  # None: LightningCLI reads sys.argv itself (and says so in --help)
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if argv and argv[0] in EXTRA_VERBS:
            importlib.import_module(EXTRA_VERBS[argv[0]]).main(argv[1:])
        else:
            from dimba.cli.fit import run
            run(lightning_args)
    except SIGTERMException:
        print("stopped by SIGTERM (last.ckpt saved by CheckpointOnStop when configured)", file=sys.stderr)
        raise SystemExit(143) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
