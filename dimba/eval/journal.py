"""What an evaluation has finished, saved after each piece, so that an interrupted `dimba eval` loses at most
the piece it was on.

Every piece (one sampling setting's row, one entropy bisection, ...) is stored under a key that names it, in
`<out_dir>/partial.json`, with a fingerprint of what all pieces depend on (the checkpoint files, prompts, data)
and a digest of each piece. Rerun with the same fingerprint, finished pieces whose digest still matches are
read back instead of recomputed (a piece edited or spoilt on disk is recomputed, with a warning); new settings
(another step count, say) are computed and added. Each piece is seeded on its own (per-example streams), so a
resumed evaluation gives the rows a straight one gives.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

JOURNAL_NAME = "partial.json"


def file_identity(path: str | os.PathLike | None) -> list | None:
    """(resolved path, size, mtime) of a checkpoint: a retrained checkpoint at the same path is another model."""
    if path is None or not Path(path).exists():  # a missing checkpoint is reported when it is loaded
        return None
    stat = Path(path).stat()
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


class Journal:
    """Finished pieces of one evaluation, keyed by what they are, kept on disk after each one."""

    def __init__(self, out_dir: Path, fingerprint: dict):
        self.path = Path(out_dir) / JOURNAL_NAME
        self.fingerprint = json.loads(json.dumps(fingerprint, default=str))  # as it reads back from disk
        self.pieces: dict[str, dict] = {}
        if self.path.exists():
            saved = self._read()
            if saved.get("fingerprint") == self.fingerprint:
                pieces = saved.get("pieces")
                pieces = pieces if isinstance(pieces, dict) else {}
                self.pieces = {k: p for k, p in pieces.items()
                               if isinstance(p, dict) and "value" in p and p.get("digest") == digest(p["value"])}
                if len(self.pieces) < len(pieces):
                    print(f"warning: {len(pieces) - len(self.pieces)} piece(s) of {self.path} do not match their "
                          "digest (edited or spoilt); computing them again", file=sys.stderr)
                print(f"resuming: {len(self.pieces)} finished piece(s) read from {self.path}", file=sys.stderr)

    def _read(self) -> dict:
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
            print(f"warning: {self.path} is unreadable ({type(err).__name__}); starting the evaluation afresh",
                  file=sys.stderr)
            return {}
        return saved if isinstance(saved, dict) else {}

    def run(self, key: Any, compute: Callable[..., Any], *args, **kwargs) -> Any:
        """The piece named `key` (any JSON value): read back if finished, else `compute(*args, **kwargs)`, saved
        at once. Either way it comes back as it reads from JSON (lists for tuples)."""
        name = json.dumps(key, sort_keys=True, default=str)
        if name not in self.pieces:
            value = json.loads(json.dumps(compute(*args, **kwargs), default=str))
            self.pieces[name] = {"value": value, "digest": digest(value)}
            self._save()
        return self.pieces[name]["value"]

    def _save(self) -> None:
        # Write-then-rename: an interruption mid-write leaves the previous journal, never half of one.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "pieces": self.pieces}))
        os.replace(tmp, self.path)

    def close(self) -> None:
        """The evaluation's outputs are written: the journal has done its job."""
        self.path.unlink(missing_ok=True)
