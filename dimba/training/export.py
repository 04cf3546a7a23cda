"""Export folders: a checkpoint's (EMA) weights, tokenizer and configuration, laid out as the Hugging Face Hub
takes a model repository:

    config.json         {"model_type": "dimba", "class_path": ..., "hyper_parameters": {...}, "training": {...}}
    model.safetensors   the weights (the EMA average when the run used EMA), and the learned time warp's
                        buffers under the prefix `_time_warp.`
    tokenizer.json      the tokenizer (Hugging Face `tokenizers` format)
    README.md           a model card: architecture, parameters, training data and steps, validation figures

No pickles: nothing in the folder runs code. Folders written before the model card (config.json with the
time warp inline) still load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dimba.errors import DimbaError

FILES = ("model.safetensors", "tokenizer.json", "config.json")
WARP_PREFIX = "_time_warp."


def _plain(value):
    return value.tolist() if torch.is_tensor(value) else value


def write_export(ckpt: dict, out_dir: Path) -> None:
    """Write a checkpoint dict (read by `read_checkpoint`) as an export folder; refuses to overwrite one."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DimbaError(f"{out_dir} exists and is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DimbaError(f"{out_dir} exists and is not empty; choose a new folder")
    hparams = ckpt["hyper_parameters"]
    tensors = {k: v.detach().contiguous() for k, v in ckpt["state_dict"].items()}
    warp = ckpt.get("time_warp")
    warp_settings = None
    if warp is not None:
        tensors.update({WARP_PREFIX + k: v.contiguous() for k, v in warp.items() if torch.is_tensor(v)})
        warp_settings = {k: v for k, v in warp.items() if not torch.is_tensor(v)}
    data = ckpt.get("datamodule_hyper_parameters") or {}
    training = {"global_step": ckpt.get("global_step"), "data": {k: _plain(v) for k, v in data.items()},
                "validation": ckpt.get("validation") or {}}
    config = {"model_type": "dimba", "class_path": hparams["_class_path"],
              "hyper_parameters": {k: v for k, v in hparams.items() if not k.startswith("_")},
              "time_warp": warp_settings, "training": training}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(out_dir / "model.safetensors"))
        (out_dir / "tokenizer.json").write_text(ckpt["tokenizer_json"], encoding="utf-8")
        (out_dir / "config.json").write_text(json.dumps(config, indent=2, default=_plain), encoding="utf-8")
        (out_dir / "README.md").write_text(model_card(config, ckpt["state_dict"]), encoding="utf-8")
    except OSError as err:
        raise DimbaError(f"cannot write the export folder {out_dir}: {err.strerror or err}") from None


def read_export(folder: Path) -> dict:
    """An export folder as a checkpoint-like dict (state_dict, hyper_parameters, tokenizer_json, time_warp)."""
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise DimbaError(f"{folder} is not a DIMBA export folder (missing {', '.join(missing)})")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        tensors = load_file(str(folder / "model.safetensors"))
        tokenizer_json = (folder / "tokenizer.json").read_text(encoding="utf-8")
    except (json.JSONDecodeError, OSError, RuntimeError, UnicodeDecodeError, SafetensorError) as err:
        reason = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise DimbaError(f"{folder} holds an unreadable export: {reason}") from None
    if not isinstance(config, dict) or "class_path" not in config or not isinstance(config.get("hyper_parameters"),
                                                                                    dict):
        raise DimbaError(f"{folder}/config.json is not a DIMBA export configuration")
    state = {k: v for k, v in tensors.items() if not k.startswith(WARP_PREFIX)}
    warp = config.get("time_warp")
    if warp is not None:
        inline = {k: torch.tensor(v, dtype=torch.float64) for k, v in warp.items() if isinstance(v, list)}
        stored = {k[len(WARP_PREFIX):]: v for k, v in tensors.items() if k.startswith(WARP_PREFIX)}
        warp = {**{k: v for k, v in warp.items() if not isinstance(v, list)}, **inline, **stored}
    training = config.get("training") or {}
    hparams = {**config["hyper_parameters"], "_class_path": config["class_path"]}
    return {"state_dict": state, "hyper_parameters": hparams,
            "tokenizer_json": tokenizer_json, "time_warp": warp, "global_step": training.get("global_step"),
            "datamodule_hyper_parameters": training.get("data"), "validation": training.get("validation")}


def _table(rows: dict, indent: str = "") -> list[str]:
    lines = []
    for key, value in rows.items():
        if isinstance(value, dict):
            lines.append(f"{indent}- {key}:")
            lines += _table(value, indent + "  ")
        else:
            lines.append(f"{indent}- {key}: `{value}`")
    return lines


def model_card(config: dict, state_dict: dict) -> str:
    """README.md for the Hub: what the model is, how it was trained, how it validated, how to use it."""
    hp, training = config["hyper_parameters"], config["training"]
    kind = config["class_path"].rsplit(".", 1)[-1]
    params = sum(v.numel() for k, v in state_dict.items() if k.startswith("net."))
    data = training.get("data") or {}
    validation = training.get("validation") or {}
    description = {
        "DimbaLM": "a non-autoregressive text generator: Gaussian diffusion over token embeddings with a "
                   "bidirectional Mamba-2 denoiser, generating every position in parallel in T denoising steps",
        "ARLM": "the autoregressive baseline of the DIMBA project: a causal Mamba-2 language model",
    }.get(kind, f"a {kind} model of the DIMBA project")
    lines = ["---", "library_name: dimba", "license: apache-2.0", "pipeline_tag: text-generation",
             "tags: [dimba, mamba2, text-generation" + (", diffusion]" if kind != "ARLM" else "]"), "---", "",
             f"# {kind}", "", f"This is {description}.", "",
             "## Architecture", "", f"- model kind: `{config['class_path']}`", f"- parameters: {params:,}",
             f"- vocabulary: {hp.get('vocab_size')} tokens (byte-level BPE, `tokenizer.json`), "
             f"trained context: {hp.get('seq_len')} tokens"]
    lines += _table({k: v for k, v in hp.items() if k not in ("vocab_size", "seq_len", "optim")})
    lines += ["", "## Training", "", f"- optimiser steps: {training.get('global_step')}"]
    lines += _table({"data": {k: data[k] for k in ("source", "seq_len", "batch_size", "tokenizer_vocab_size",
                                                    "val_fraction") if k in data}})
    lines += _table({"optimiser": hp.get("optim", {})})
    lines += ["", "## Validation (the last validation before this checkpoint)", ""]
    if validation:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" for k, v in sorted(validation.items())]
    else:
        lines.append("No validation figures were saved with this checkpoint.")
    lines += ["", "## Use", "", "```python", "import dimba", "", 'model = dimba.load("path/to/this/folder")',
              'print(model.complete("ROMEO:", length=64))', "```", "",
              "or, from the command line, `dimba predict --ckpt_path path/to/this/folder --prompt \"ROMEO:\"`.", ""]
    return "\n".join(lines)
