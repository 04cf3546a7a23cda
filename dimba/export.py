"""`dimba export`: a checkpoint's (EMA) weights, tokenizer and configuration as a folder a user can share:

    model.safetensors   the weights (the EMA average when the run used EMA)
    tokenizer.json      the tokenizer
    config.json         {"class_path": ..., "hyper_parameters": {...}, "time_warp": {...}}

`dimba predict --ckpt_path FOLDER` loads it like a checkpoint. No pickles: nothing in the folder runs code.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dimba.errors import DimbaError

FILES = ("model.safetensors", "tokenizer.json", "config.json")


def export(ckpt: dict, out_dir: Path) -> None:
    """Write a loaded training checkpoint (dict) as an export folder; refuses to overwrite one."""
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DimbaError(f"{out_dir} exists and is not empty; choose a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in ckpt["state_dict"].items()}
    save_file(state, str(out_dir / "model.safetensors"))
    (out_dir / "tokenizer.json").write_text(ckpt["tokenizer_json"], encoding="utf-8")
    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    warp = ckpt.get("time_warp")
    if warp is not None:
        warp = {k: v.tolist() if torch.is_tensor(v) else v for k, v in warp.items()}
    config = {"class_path": ckpt["hyper_parameters"].get("_class_path", "dimba.lit_module.DimbaLM"),
              "hyper_parameters": hparams, "time_warp": warp}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, default=list), encoding="utf-8")


def read_export(folder: Path) -> dict:
    """An export folder as a checkpoint-like dict (state_dict, hyper_parameters, tokenizer_json, time_warp)."""
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise DimbaError(f"{folder} is not a DIMBA export folder (missing {', '.join(missing)})")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        state = load_file(str(folder / "model.safetensors"))
    except (json.JSONDecodeError, OSError, RuntimeError) as err:
        raise DimbaError(f"{folder} holds an unreadable export: {err}") from None
    warp = config.get("time_warp")
    if warp is not None:
        warp = {k: torch.tensor(v, dtype=torch.float64) if isinstance(v, list) else v for k, v in warp.items()}
    return {"state_dict": state, "hyper_parameters": {**config["hyper_parameters"],
                                                       "_class_path": config["class_path"]},
            "tokenizer_json": (folder / "tokenizer.json").read_text(encoding="utf-8"), "time_warp": warp}


def main(argv: list[str]) -> None:
    from dimba.checkpoint import read_checkpoint

    parser = argparse.ArgumentParser(prog="dimba export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", required=True, type=Path)
    parser.add_argument("--out_dir", required=True, type=Path)
    args = parser.parse_args(argv)
    export(read_checkpoint(args.ckpt_path), args.out_dir)
    print(args.out_dir)
