"""Loading a DIMBA checkpoint for sampling: any device, any saved precision, with clear errors."""

from __future__ import annotations

import inspect
import pickle
import zipfile
from pathlib import Path

import torch

from dimba.errors import DimbaError
from dimba.export import read_export
from dimba.lit_ar import ARLM
from dimba.lit_base import LanguageModelBase
from dimba.lit_module import DimbaLM

MODEL_CLASSES = {"dimba.lit_module.DimbaLM": DimbaLM, "dimba.lit_ar.ARLM": ARLM}


def read_checkpoint(path: str | Path) -> dict:
    """A training checkpoint written by `dimba fit`, or an export folder, as a dict; clear errors otherwise."""
    path = Path(path)
    if path.is_dir():
        return read_export(path)
    if not path.is_file():
        raise DimbaError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        reason = str(err).strip().split(". ")[0]
        raise DimbaError(f"{path} is not a readable checkpoint (truncated or corrupt?): {reason}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise DimbaError(f"{path} is not a DIMBA training checkpoint (no state_dict / hyper_parameters)")
    if not ckpt.get("tokenizer_json"):
        raise DimbaError(f"{path} carries no tokenizer; it was not written by `dimba fit`")
    return ckpt


def load_for_inference(path: str | Path, device: str | torch.device = "cpu") -> LanguageModelBase:
    """The model of a checkpoint written by `dimba fit`, or of an export folder (DimbaLM or ARLM; EMA
    weights when EMA was on), in fp32, in eval mode, on `device`, with its tokenizer (and time warp)."""
    ckpt = read_checkpoint(path)
    hparams = ckpt["hyper_parameters"]
    cls = MODEL_CLASSES.get(hparams.get("_class_path", "dimba.lit_module.DimbaLM"))
    if cls is None:
        raise DimbaError(f"{path} holds a {hparams['_class_path']}, not a DIMBA or AR model")
    try:
        # LightningCLI adds private keys (_instantiator, _class_path) beside the constructor's arguments.
        accepted = inspect.signature(cls.__init__).parameters
        model = cls(**{k: v for k, v in hparams.items() if k in accepted})
        # Parameters saved in bf16 (or on a GPU) are cast to this model's fp32 copies on load.
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (TypeError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0]
        raise DimbaError(f"{path} does not match this version's DIMBA model: {first}") from None
    model.on_load_checkpoint(ckpt)
    return model.float().to(device).eval()
