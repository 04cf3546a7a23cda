"""`dimba export`: a checkpoint as a folder to share or upload to the Hugging Face Hub as it is
(config.json, model.safetensors, tokenizer.json, README.md model card); `dimba predict` and `dimba.load`
read it like a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from dimba.training.checkpoint import build_model, read_checkpoint
from dimba.training.export import write_export


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="dimba export", description=__doc__)
    parser.add_argument("--ckpt_path", required=True, type=Path, help="checkpoint written by `dimba fit`")
    parser.add_argument("--out_dir", required=True, type=Path, help="a new (or empty) folder")
    args = parser.parse_args(argv)
    ckpt = read_checkpoint(args.ckpt_path)
    build_model(ckpt, args.ckpt_path)  # refuse, before writing anything, a checkpoint that would not load
    write_export(ckpt, args.out_dir)
    print(args.out_dir)
