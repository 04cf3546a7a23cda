"""The `dimba` command: one verb per job, each a LightningCLI (fit, validate, test) or a jsonargparse command over
a typed function (the rest), so every verb takes `--config FILE`, `--print_config` and `--help` alike, with help
from the docstrings. `dimba --help` lists the verbs.
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

LIGHTNING_VERBS = {
    "fit": "train a model: `dimba fit --config configs/base.yaml` (LightningCLI; any model kind with --model)",
    "validate": "validation metrics of a checkpoint on a data config (LightningCLI)",
    "test": "test metrics of a checkpoint on a data config (LightningCLI)",
    "distill": "halve a committing model's sampling steps: `dimba fit` of a student (--model.init_args.teacher CKPT)",
}
# verb -> "module:function"; the function's signature is the verb's flags, its docstring the help.
FUNCTION_VERBS = {
    "predict": "dimba.cli.predict:predict",
    "eval": "dimba.cli.evaluate:evaluate",
    "bench": "dimba.cli.bench:bench",
    "export": "dimba.cli.export:export",
    "compare": "dimba.cli.compare:compare",
    "curves": "dimba.cli.curves:curves",
    "bench-mamba2": "dimba.cli.bench_mamba2:bench_mamba2",
    "configs": "dimba.cli.configs:configs",
}


def find_user_error(err: BaseException) -> DimbaError | None:
    """The DimbaError behind err, if any: jsonargparse re-raises errors of link functions as ValueError."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, DimbaError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def command(verb: str):
    """The typed function behind a non-Lightning verb."""
    module, _, name = FUNCTION_VERBS[verb].partition(":")
    return getattr(importlib.import_module(module), name)


def overview() -> str:
    """`dimba --help`: every verb with the first line of its help."""
    lines = ["usage: dimba VERB [--config FILE] [flags]   (dimba VERB --help for a verb's flags)", "", "verbs:"]
    summaries = dict(LIGHTNING_VERBS)
    for verb in FUNCTION_VERBS:
        summaries[verb] = (command(verb).__doc__ or "").strip().splitlines()[0]
    width = max(map(len, summaries))
    lines += [f"  {verb:<{width}}  {summary}" for verb, summary in summaries.items()]
    return "\n".join(lines)


def run_function(verb: str, argv: list[str]) -> None:
    from jsonargparse import CLI, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # field help of SamplingConfig and the like
    CLI(command(verb), args=argv, prog=f"dimba {verb}", as_positional=False)


def main(argv: list[str] | None = None) -> None:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    lightning_args = argv  # None: LightningCLI reads sys.argv itself
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print(overview(), file=sys.stdout if argv else sys.stderr)
        raise SystemExit(0 if argv else 2)
    verb = argv[0]
    if verb not in LIGHTNING_VERBS and verb not in FUNCTION_VERBS:
        print(f"{overview()}\n\nerror: unknown verb {verb!r}", file=sys.stderr)
        raise SystemExit(2)
    try:
        if verb in FUNCTION_VERBS:
            run_function(verb, argv[1:])
        elif verb == "distill":
            from dimba.cli.fit import print_distill_help, run, with_distiller
            if {"-h", "--help"} & set(argv[1:]):
                print_distill_help()
            else:
                run(with_distiller(argv[1:]))
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
