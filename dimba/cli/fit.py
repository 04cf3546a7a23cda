"""`dimba fit | validate | test`: LightningCLI over every model kind and the text data module."""

from __future__ import annotations

import fcntl
import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.environments import SLURMEnvironment

from dimba.data.datamodule import TextDataModule
from dimba.errors import DimbaError
from dimba.training.base import LanguageModelBase
from dimba.training.checkpoint import load_checkpoint_file, model_class, upgrade_hparams


def run_folder(trainer) -> Path:
    """The folder a run logs and checkpoints under. trainer.log_dir is a collective under DDP (rank 0 broadcasts
    it): every rank must ask."""
    return Path(trainer.log_dir or trainer.default_root_dir)


class LockedRunFolder(SaveConfigCallback):
    """Lightning's config.yaml writer, which first takes an exclusive lock on the run folder (`.dimba.lock`, rank 0)
    and holds it until the run ends: a second run in the same folder is refused with one line instead of
    interleaving its config and checkpoints with this one's."""

    LOCK_NAME = ".dimba.lock"
    _lock = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        folder = run_folder(trainer)
        if trainer.is_global_zero and self._lock is None:
            folder.mkdir(parents=True, exist_ok=True)
            handle = open(folder / self.LOCK_NAME, "a")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                raise DimbaError(f"another run is using {folder} (it holds {folder / self.LOCK_NAME}); wait for it to "
                                 "end, or give this one its own --trainer.logger.init_args.name") from None
            self._lock = handle
        super().setup(trainer, pl_module, stage)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._lock is not None:
            self._lock.close()  # closing releases the lock
            self._lock = None


class DimbaCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # Lightning's own `predict` is not offered: `dimba predict` is a verb of its own (sampling flags).
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name != "predict"}

    def add_arguments_to_parser(self, parser) -> None:
        # Values that flow from data to model: the block length at parse time, the vocabulary size once
        # the data module has its tokenizer (a trained BPE can come out smaller than asked for).
        parser.link_arguments("data.seq_len", "model.init_args.seq_len")
        parser.link_arguments("data", "model.init_args.vocab_size", compute_fn=lambda data: data.vocab_size,
                              apply_on="instantiate")

    def before_fit(self) -> None:
        """A fresh fit over a run folder that holds checkpoints would replace them (`last.ckpt` first, at its first
        save): refused with one line unless it resumes them (--ckpt_path, or Lightning's own resumption of a
        requeued SLURM job from its hpc_ckpt_*.ckpt)."""
        if self.config[self.config.subcommand].get("ckpt_path") or self.slurm_requeued():
            return
        folder = run_folder(self.trainer)
        saved = sorted({path for callback in self.trainer.checkpoint_callbacks
                        for path in Path(callback.dirpath or folder / "checkpoints").glob("*.ckpt")})
        if saved:
            names = [path.name for path in saved]
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            resume = next((path for path in saved if path.name == "last.ckpt"), saved[-1])
            raise DimbaError(f"{folder} holds a run's checkpoints ({shown}), which this fresh run would replace: "
                             f"resume it with --ckpt_path {resume}, give this run its own "
                             "--trainer.logger.init_args.name, or remove the folder")

    def slurm_requeued(self) -> bool:
        """Lightning restores a requeued SLURM job from default_root_dir/hpc_ckpt_*.ckpt by itself."""
        return SLURMEnvironment.detect() and any(Path(self.trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"))

    def before_instantiate_classes(self) -> None:
        # Lightning loads a checkpoint with torch's default unless told; say it: plain data only, never code.
        subcommand = self.config.get("subcommand")
        if subcommand and self.config[subcommand].get("weights_only") is None:
            self.config[subcommand].weights_only = True

    def _parse_ckpt_path(self) -> None:
        """As LightningCLI's own (the model is rebuilt from the checkpoint's hyper-parameters), but reading only
        local files, as plain data (one error line otherwise), with the hyper-parameters of older versions brought
        to today's layout first. Lightning reads the same local file again to restore the state."""
        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if not ckpt_path:
            return
        hparams = load_checkpoint_file(ckpt_path)["hyper_parameters"]
        if not hparams:
            return
        hparams = upgrade_hparams(hparams)
        model_class(hparams["_class_path"])  # a model kind of this package: nothing else is imported
        model = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({self.config.subcommand: {"model": model}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise


def run(argv: list[str] | None) -> None:
    # Subclass mode: `model.class_path` picks the model kind (HybridLM, DimbaLM, MaskedLM, ARLM); configs/base.yaml
    # sets the hybrid DIMBA and configs/model/*.yaml switch it.
    DimbaCLI(LanguageModelBase, TextDataModule, subclass_mode_model=True, args=argv,
             save_config_callback=LockedRunFolder, save_config_kwargs={"overwrite": True},
             parser_kwargs={"prog": "dimba"})


class _ParseOnly(DimbaCLI):
    """`dimba fit`'s parser over config files, instantiating nothing (no data is read, no seed is set)."""

    def _set_seed(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def model_from_configs(*args: str | Path) -> LanguageModelBase:
    """A freshly initialised model of config files stacked as `dimba fit` stacks them, e.g. ("--config", base,
    "--model", ar) (the vocabulary: the data config's tokenizer_vocab_size), for speed measurements without a
    checkpoint."""
    cli = _ParseOnly(LanguageModelBase, TextDataModule, subclass_mode_model=True, run=False, args=list(map(str, args)))
    model = cli.config.model
    init = model.init_args.as_dict() | {"vocab_size": cli.config.data.tokenizer_vocab_size}
    return model_class(model.class_path)(**init)


DISTILLER = "dimba.training.distill.Distiller"


def with_distiller(args: list[str]) -> list[str]:
    """`dimba distill ARGS` as `dimba fit`: the model switched to the Distiller right after the config files (which
    give the data and trainer; a model they name is replaced, keeping the settings the Distiller takes), so that
    the flags after them set the Distiller's own (--model.init_args.teacher, teacher_steps)."""
    last = max((i + 2 for i, a in enumerate(args) if a in ("--config", "-c")), default=0)
    return ["fit", *args[:last], "--model", DISTILLER, *args[last:]]


def print_distill_help() -> None:
    """`dimba distill --help`: the verb's usage, then the Distiller's own flags (the rest are `dimba fit`'s)."""
    print("usage: dimba distill --config CONFIG [--config CONFIG ...] --model.init_args.teacher CKPT\n"
          "                     [--model.init_args.teacher_steps N] [any `dimba fit` flag: dimba fit --help]\n")
    run(["fit", "--model.help", DISTILLER])
