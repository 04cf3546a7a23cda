"""Checkpoints for inference: read one (a training checkpoint or an export folder), bring the
hyper-parameters of older versions to today's layout, and build the model on any device, with clear errors."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pickle
import zipfile
from pathlib import Path

import torch

from dimba.config import Config
from dimba.errors import DimbaError
from dimba.training.base import LanguageModelBase, check_state_dict
from dimba.training.export import read_export

MODEL_PACKAGE = "dimba.training"  # where every model kind lives (a checkpoint's class_path must point there)

# Up to a92ad64 the LightningModules lived in other modules and took every setting as a flat keyword; their
# checkpoints store flat hyper-parameters. Where each of those keywords lives now:
MOVED_CLASSES = {"dimba.lit_module.DimbaLM": "dimba.training.dimba_lm.DimbaLM",
                 "dimba.lit_ar.ARLM": "dimba.training.ar_lm.ARLM"}
_NET = ("d_model", "n_layers", "mlp_ratio", "d_state", "headdim", "expand", "chunk_size", "impl")
_OPTIM = ("lr", "weight_decay", "betas", "warmup_steps", "lr_decay_steps", "min_lr_ratio")
FLAT_LAYOUTS = {
    "dimba.training.dimba_lm.DimbaLM": {
        "net": _NET,
        "denoiser": ("d_embed", "conditioning", "combine", "prompt_encoder", "embed_norm", "x0_param",
                     "self_conditioning"),
        "diffusion": ("schedule", "log_snr_shift", "time_warp", "mse_weight", "ce_weight", "self_cond_prob"),
        "prompt": ("prompt_prob", "max_prompt_frac", "cfg_dropout"),
        "optim": _OPTIM,
    },
    "dimba.training.ar_lm.ARLM": {"net": _NET, "optim": _OPTIM},
}


def upgrade_hparams(hparams: dict) -> dict:
    """Hyper-parameters of any version, as today's constructors take them (nested configs, current class path).
    Today's layout passes through unchanged."""
    if not isinstance(hparams, dict) or not all(isinstance(k, str) for k in hparams):
        raise DimbaError(f"the checkpoint's hyper-parameters are not a mapping of names (a {type(hparams).__name__})")
    hp = {k: v for k, v in hparams.items() if k != "_instantiator"}
    path = hp.get("_class_path", "dimba.lit_module.DimbaLM")  # the oldest checkpoints name no class
    if not isinstance(path, str):
        raise DimbaError(f"the checkpoint's class path is not a name: {path!r}")
    hp["_class_path"] = path = MOVED_CLASSES.get(path, path)
    layout = FLAT_LAYOUTS.get(path)
    if layout is not None and "net" not in hp:
        new = {"_class_path": path, **{k: hp.pop(k) for k in ("vocab_size", "seq_len") if k in hp}}
        hp.pop("_class_path")
        for group, names in layout.items():
            new[group] = {name: hp.pop(name) for name in names if name in hp}
        if hp:
            raise DimbaError(f"the checkpoint has settings this version does not know: {', '.join(sorted(hp))}")
        hp = new
    return with_defaults(variants_as_types(hp))


# Settings that 0.3 removed, with the value that was their behaviour by default (a checkpoint that set another
# value cannot be honoured). Their measurements stay in docs/results.md and docs/history/.
REMOVED = {("denoiser", "combine"): "sum", ("masked", "combine"): "sum", ("diffusion", "latent_input"): "raw",
           ("hybrid", "high_t"): 1.0}


def variants_as_types(hp: dict) -> dict:
    """Up to 0.2 the hybrid DIMBA was `DimbaLM` with `diffusion.corruption: hybrid`, the time warp lived in
    `diffusion`, and a few settings since removed existed: the same checkpoint in 0.3's layout."""
    hp = {k: dict(v) if isinstance(v, dict) else v for k, v in hp.items()}
    for (group, name), default in REMOVED.items():
        value = hp.get(group, {}).pop(name, default) if isinstance(hp.get(group), dict) else default
        if value != default:
            raise DimbaError(f"the checkpoint sets {group}.{name}: {value}, a setting removed in version 0.3 "
                             f"(measured no better: docs/results.md, docs/history/); only {default!r} loads")
    if hp.get("masked") == {}:
        hp.pop("masked")
    diffusion = hp.get("diffusion")
    if hp["_class_path"] == "dimba.training.dimba_lm.DimbaLM" and isinstance(diffusion, dict):
        warp = {new: diffusion.pop(old) for old, new in (("time_warp", "enabled"), ("warp_window", "window"))
                if old in diffusion}
        if diffusion.pop("corruption", "gaussian") == "hybrid":
            hp["_class_path"] = "dimba.training.hybrid_lm.HybridLM"
        elif warp:
            hp["time_warp"] = {**hp.get("time_warp", {}), **warp}
    return hp


def with_defaults(hp: dict) -> dict:
    """Every config setting the checkpoint does not name, at its model class's default: options added after a
    checkpoint was written default to the behaviour of the code that wrote it (the Gaussian corruption, the tied
    head, ...). `dimba fit --ckpt_path` merges these hyper-parameters over the config files, so without this a
    run resumed with today's configs/base.yaml would take the missing settings from it (the hybrid corruption)."""
    try:
        cls = model_class(hp["_class_path"])
    except DimbaError:  # refused with this message when the model is built
        return hp
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if isinstance(param.default, Config) and isinstance(hp.get(name, {}), dict):
            hp[name] = {**param.default.to_dict(), **hp.get(name, {})}
    return hp


def local_checkpoint_path(path: str | Path) -> Path:
    """`path` as a local file, or a DimbaError: remote addresses (http://, s3://, ...) are refused, because what
    Lightning fetches from them it unpickles with weights_only=False, which can run any code the file holds."""
    text = str(path)
    if "://" in text:
        raise DimbaError(f"checkpoints are read from local files only, not from {text.split('://')[0]}:// addresses "
                         "(a downloaded checkpoint could run code when unpickled): download it, then pass the file")
    return Path(path)


def load_checkpoint_file(path: str | Path) -> dict:
    """torch.load of a local training checkpoint as plain data (`weights_only=True`: loading it runs no code), or a
    DimbaError in one line for a missing, unreadable, truncated or code-carrying file."""
    path = local_checkpoint_path(path)
    if not path.is_file():
        raise DimbaError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # Torch's message advises weights_only=False: exactly what must not be done with a file one did not write.
        # Only the line that names what was refused is kept.
        lines = [line for line in str(err).splitlines() if "GLOBAL" in line or "global" in line]
        refused = f" ({lines[0].strip()})" if lines else ""
        raise DimbaError(f"{path} holds objects other than plain data{refused}; refusing to unpickle it, as that "
                         "could run code. Only checkpoints written by `dimba fit` load") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, IndexError, OSError, MemoryError) as err:
        reason = (str(err).strip() or type(err).__name__).split(". ")[0].splitlines()[0]
        raise DimbaError(f"{path} is not a readable checkpoint (truncated or corrupt?): {reason}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) or \
            not isinstance(ckpt.get("hyper_parameters"), dict):
        raise DimbaError(f"{path} is not a DIMBA training checkpoint (no state_dict / hyper_parameters)")
    return ckpt


def read_checkpoint(path: str | Path) -> dict:
    """A training checkpoint written by `dimba fit`, or an export folder, as a dict with today's
    hyper-parameter layout; clear errors otherwise."""
    path = local_checkpoint_path(path)
    if path.is_dir():
        ckpt = read_export(path)
    else:
        ckpt = load_checkpoint_file(path)
        if not ckpt.get("tokenizer_json"):
            raise DimbaError(f"{path} carries no tokenizer; it was not written by `dimba fit`")
    ckpt["hyper_parameters"] = upgrade_hparams(ckpt["hyper_parameters"])
    return ckpt


def model_class(class_path: str) -> type[LanguageModelBase]:
    """The LightningModule class a checkpoint names. Only modules of `dimba.training` (the model kinds' package,
    whose modules do nothing when imported) are imported: a checkpoint cannot make loading import anything else."""
    module, _, name = class_path.rpartition(".") if isinstance(class_path, str) else ("", "", "")
    cls = None
    if module.startswith(MODEL_PACKAGE + ".") and importlib.util.find_spec(module) is not None:
        cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, LanguageModelBase)):
        raise DimbaError(f"the checkpoint holds a {class_path!r}, which is not a model kind of this version")
    return cls


def build_model(ckpt: dict, source: str | Path = "the checkpoint") -> LanguageModelBase:
    """The model a checkpoint dict describes (today's layout), with its weights, tokenizer and extras. The
    configuration is first built on the meta device (no memory), so that settings that do not fit the weights
    (a config.json that says d_model 4096) are refused before anything of their size is allocated."""
    hparams = ckpt["hyper_parameters"]
    cls = model_class(hparams.get("_class_path"))
    kwargs = {k: v for k, v in hparams.items() if not k.startswith("_")}
    try:
        with torch.device("meta"):
            probe = cls(**kwargs)
        check_state_dict(probe.state_dict(), ckpt["state_dict"], source)
        model = cls(**kwargs)
        model.on_load_checkpoint(ckpt)  # tokenizer, time warp
        # Parameters saved in bf16 (or on a GPU) are cast to this model's fp32 copies on load.
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except DimbaError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, RuntimeError) as err:
        first = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise DimbaError(f"{source} does not match this version's {cls.__name__}: {first}") from None
    return model


def usable_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device this machine has, or a DimbaError that says why not (not a traceback from the
    first tensor moved there)."""
    try:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise DimbaError(f"device {device} asked for, but this machine has no CUDA GPU")
        torch.empty(0, device=device)
    except RuntimeError as err:
        raise DimbaError(f"cannot use device {str(device)!r}: {str(err).splitlines()[0]}") from None
    return device


def load_for_inference(path: str | Path, device: str | torch.device | None = None) -> LanguageModelBase:
    """The model of a checkpoint written by `dimba fit` or of an export folder (any model kind; EMA weights
    when EMA was on), in fp32, in eval mode, on `device` (default: CUDA when available), with its tokenizer."""
    device = usable_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_model(read_checkpoint(path), path)
    return model.float().to(device).eval()
