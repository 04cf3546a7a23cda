"""Where the verbs write: nothing a verb did not write is overwritten (an export folder, another tool's file, the
target of a symbolic link) unless the user says so."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from fnmatch import fnmatch
from pathlib import Path

from dimba.errors import DimbaError


def check_out_dir(folder: Path, patterns: Iterable[str], verb: str) -> None:
    """Refuse an output folder that holds anything but files named like the verb's own outputs (`patterns`, shell
    globs): their neighbours would be overwritten or mixed with them."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise DimbaError(f"--out_dir {folder} exists and is not a folder")
    patterns = tuple(patterns)
    foreign = sorted(p.name for p in folder.iterdir() if not any(fnmatch(p.name, pat) for pat in patterns))
    if foreign:
        raise DimbaError(f"--out_dir {folder} holds files `{verb}` did not write ({', '.join(foreign[:4])}"
                         f"{', ...' if len(foreign) > 4 else ''}); choose a new folder")


def check_output_file(path: Path, looks_ours: Callable[[bytes], bool], overwrite: bool, verb: str) -> None:
    """Refuse to replace an existing file unless its first bytes look like what the verb writes there, or
    `overwrite`; a symbolic link (writing through it changes a file elsewhere) only with `overwrite`."""
    if overwrite or not (path.exists() or path.is_symlink()):
        return
    if path.is_symlink():
        raise DimbaError(f"{path} is a symbolic link; `{verb}` would write through it: pass --overwrite true, or "
                         "choose another path")
    if not path.is_file():
        raise DimbaError(f"{path} exists and is not a file")
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if not looks_ours(head):
        raise DimbaError(f"{path} exists and is not an output of `{verb}`; pass --overwrite true to replace it, or "
                         "choose another path")


def is_png(head: bytes) -> bool:
    return head.startswith(b"\x89PNG\r\n\x1a\n")
