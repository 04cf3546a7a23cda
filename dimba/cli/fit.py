"""`dimba fit | validate | test`: LightningCLI over every model kind and the text data module."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningCLI

from dimba.data.datamodule import TextDataModule
from dimba.training.base import LanguageModelBase
from dimba.training.checkpoint import upgrade_hparams


class DimbaCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # Values that flow from data to model: the block length at parse time, the vocabulary size once
        # the data module has its tokenizer (a trained BPE can come out smaller than asked for).
        parser.link_arguments("data.seq_len", "model.init_args.seq_len")
        parser.link_arguments("data", "model.init_args.vocab_size", compute_fn=lambda data: data.vocab_size,
                              apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """As LightningCLI's own (the model is rebuilt from the checkpoint's hyper-parameters), with the
        hyper-parameters of older versions brought to today's layout first."""
        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        hparams = torch.load(ckpt_path, weights_only=True, map_location="cpu").get("hyper_parameters", {})
        if not hparams:
            return
        hparams = upgrade_hparams(hparams)
        model = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({self.config.subcommand: {"model": model}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise


def run(argv: list[str] | None) -> None:
    # Subclass mode: `model.class_path` picks the model kind (DimbaLM, ARLM, ...); configs/base.yaml sets DIMBA
    # and configs/model/*.yaml switch it.
    DimbaCLI(LanguageModelBase, TextDataModule, subclass_mode_model=True, args=argv,
             save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": "dimba"})
