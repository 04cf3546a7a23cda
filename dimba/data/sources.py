"""Where text comes from: the embedded corpus, local files / folders / globs, or a Hugging Face hub dataset,
all loaded through `datasets`. Bad sources fail with a `DimbaError` that names the problem."""

from __future__ import annotations

import codecs
import glob
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from dimba.data.shakespeare import ensure_shakespeare
from dimba.errors import DimbaError

log = logging.getLogger(__name__)

BUILDERS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "json", ".json": "json",
            ".parquet": "parquet", ".csv": "csv"}
EMBEDDED = ("shakespeare",)


@dataclass
class Source:
    """A resolved corpus: a `datasets` builder with its files, or a hub dataset name."""

    builder: str  # "text", "json", "parquet", "csv", or "hub"
    files: list[Path]
    name: str  # what the user asked for
    hub_config: str | None = None
    hub_split: str = "train"

    @property
    def fingerprint(self) -> str:
        """Changes when the files (paths, sizes, modification times) or the hub address change."""
        h = hashlib.sha256(f"{self.builder}|{self.name}|{self.hub_config}|{self.hub_split}".encode())
        for f in self.files:
            st = f.stat()
            h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]


def _looks_local(spec: str) -> bool:
    return (spec.startswith((".", "/", "~")) or any(ch in spec for ch in "*?[")
            or Path(spec).suffix.lower() in BUILDERS or os.path.exists(spec))


def _check_readable_utf8(files: list[Path]) -> None:
    for f in files:
        if not os.access(f, os.R_OK):
            raise DimbaError(f"cannot read corpus file {f} (permission denied)")
    for f in files:
        if BUILDERS.get(f.suffix.lower()) != "text":
            continue
        with open(f, "rb") as fh:  # in blocks: a single 200 MB line must not be read at once
            decoder = codecs.getincrementaldecoder("utf-8")()
            try:
                while block := fh.read(1 << 20):
                    decoder.decode(block)
                decoder.decode(b"", final=True)
            except UnicodeDecodeError as err:
                log.warning("%s is not valid UTF-8 (byte %d): undecodable bytes are replaced with U+FFFD",
                            f, err.start)


def resolve_source(spec: str | None, hub_config: str | None = None, hub_split: str = "train") -> Source:
    """Turn the user's `data.source` into a Source. None or "shakespeare" is the embedded corpus."""
    if spec is None or spec in EMBEDDED:
        folder = ensure_shakespeare()
        return Source("text", sorted(folder.glob("*.txt")), "shakespeare")
    if not _looks_local(spec):
        return Source("hub", [], spec, hub_config, hub_split)
    path = Path(spec).expanduser()
    if any(ch in spec for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise DimbaError(f"the glob {spec!r} matched no files")
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in BUILDERS)
        if not files:
            raise DimbaError(f"the folder {path} holds no corpus files ({', '.join(sorted(BUILDERS))})")
    elif path.is_file():
        files = [path]
    else:
        raise DimbaError(f"corpus not found: {path}")
    builders = {BUILDERS.get(f.suffix.lower()) for f in files}
    if None in builders:
        odd = next(f for f in files if f.suffix.lower() not in BUILDERS)
        raise DimbaError(f"unsupported corpus file type {odd.suffix or '(none)'!r} ({odd}); "
                         f"use one of {', '.join(sorted(BUILDERS))}")
    if len(builders) > 1:
        raise DimbaError(f"the corpus mixes file types ({', '.join(sorted(builders))}); use one type per source")
    _check_readable_utf8(files)
    return Source(builders.pop(), files, spec)


def load_documents(source: Source, text_column: str, streaming: bool = False):
    """A `datasets` Dataset (or IterableDataset when streaming) with one column "text" of documents."""
    import datasets  # heavy import, only when data is loaded

    datasets.disable_progress_bars()
    try:
        if source.builder == "hub":
            ds = datasets.load_dataset(source.name, source.hub_config, split=source.hub_split, streaming=streaming)
        else:
            kwargs = {"sample_by": "document", "encoding_errors": "replace"} if source.builder == "text" else {}
            ds = datasets.load_dataset(source.builder, data_files=[str(f) for f in source.files], split="train",
                                       streaming=streaming, **kwargs)
    except DimbaError:
        raise
    except Exception as err:
        raise DimbaError(f"could not load corpus {source.name!r}: {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}") from None
    columns = ds.column_names or []
    column = "text" if source.builder == "text" else text_column
    if columns and column not in columns:
        raise DimbaError(f"the corpus {source.name!r} has no column {column!r}; its columns are {columns}")
    if column != "text":
        ds = ds.rename_column(column, "text")
    drop = [c for c in (ds.column_names or []) if c != "text"]
    return ds.remove_columns(drop) if drop else ds
