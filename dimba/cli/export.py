"""`dimba export`: a checkpoint as a folder to share or upload to the Hugging Face Hub as it is."""

from __future__ import annotations

from pathlib import Path

from dimba.training.checkpoint import build_model, read_checkpoint
from dimba.training.export import write_export


def export(ckpt_path: str, out_dir: Path) -> None:
    """write a checkpoint as a Hub-ready folder (config.json, model.safetensors, tokenizer.json, model card)

    `dimba predict` and `dimba.load` read the folder like a checkpoint; nothing in it runs code when loaded.

    Args:
        ckpt_path: a checkpoint written by `dimba fit`
        out_dir: a new (or empty) folder
    """
    ckpt = read_checkpoint(ckpt_path)
    build_model(ckpt, ckpt_path)  # refuse, before writing anything, a checkpoint that would not load
    write_export(ckpt, out_dir)
    print(out_dir)
