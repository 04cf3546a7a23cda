"""The JSON-lines results file of `dimba predict`: appended and flushed row by row, resumed by a later run, locked
against a second writer, and never destroyed unless asked.

What is in an existing file decides what happens to it:
- every line a row this program writes (a JSON object with "prompt"): resumed after the rows it holds; a torn
  last line (cut off mid-write by an interruption) is the only thing ever removed, and only from our rows;
- anything else (another tool's JSONL, notes, a row spoilt in the middle): refused, unless `overwrite`;
- not a regular file (a terminal, a pipe, /dev/null): written to, never read or truncated.
A symbolic link is refused unless `overwrite`: writing through it would change a file elsewhere.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from dimba.errors import DimbaError

ROW_START = '{"prompt": '  # how every row starts (json.dumps of a dict whose first key is "prompt")


def split_lines(text: str) -> list[str]:
    """Lines split at "\\n" only (a "\\r" before it is dropped): str.splitlines would also split at U+2028,
    U+2029, U+0085, \\f and \\v, which are ordinary characters of a prompt or a completion."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _our_row(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("prompt"), str) else None


class JsonlOutput:
    """An open results file: `done` holds the prompts of the rows already in it; `write(row)` appends one."""

    def __init__(self, path: Path, overwrite: bool = False):
        self.path = path
        try:
            if path.is_symlink() and not overwrite:
                raise DimbaError(f"{path} is a symbolic link (to {os.readlink(path)}); writing through it would change "
                                 "that file: pass --overwrite to do so, or choose another --output")
            if path.exists() and path.is_dir():
                raise DimbaError(f"{path} is a folder; --output needs a file")
            path.parent.mkdir(parents=True, exist_ok=True)
            regular = not path.exists() or path.is_file()
            # surrogateescape: a file that is not UTF-8 reads back (and is refused as not ours), not a traceback.
            self.handle = open(path, "a+" if regular else "a", encoding="utf-8", errors="surrogateescape")
        except OSError as err:
            raise DimbaError(f"cannot write to {path}: {err.strerror or err}") from None
        self.done: list[str] = []
        if not regular:
            return
        try:
            # One writer per file: a second run on the same output would interleave duplicated rows.
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.close()
            raise DimbaError(f"another process is writing {path} (it holds its lock); wait for it, or choose another "
                             "--output") from None
        if overwrite:
            self.handle.truncate(0)
            return
        self.done = self._resume()

    def _resume(self) -> list[str]:
        self.handle.seek(0)
        text = self.handle.read()
        complete, _, tail = text.rpartition("\n") if "\n" in text else ("", "", text)
        rows = [_our_row(line) for line in split_lines(complete + "\n")] if complete else []
        bad = next((i for i, row in enumerate(rows) if row is None), None)
        if bad is not None or (tail and not tail.startswith(ROW_START)):
            self.handle.close()
            where = f"line {bad + 1}" if bad is not None else "its content"
            raise DimbaError(f"{self.path} exists and is not a `dimba predict` results file ({where} is not one of its "
                             "rows); pass --overwrite to replace it, or choose another --output")
        if tail:  # a row torn by an interruption: ours (what came before is ours), and incomplete
            self.handle.truncate(len(complete.encode("utf-8", "surrogateescape")) + (1 if complete else 0))
        return [row["prompt"] for row in rows]

    def write(self, row: dict) -> None:
        """Append one row (its first key must be "prompt") and flush it."""
        try:
            self.handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            self.handle.flush()
        except OSError as err:
            raise DimbaError(f"cannot write to {self.path}: {err.strerror or err}") from None

    def close(self) -> None:
        try:
            self.handle.close()
        except OSError:
            pass  # a write error was already reported
