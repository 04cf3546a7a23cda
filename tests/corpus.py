"""A small synthetic corpus for tests (no downloads): documents of simple sentences."""

import random
from pathlib import Path

WORDS = ("the king queen lord lady sword crown night day love death honour fair good noble speak come go "
         "hath doth thou thee thy my our your with and but for not").split()


def make_documents(n_docs: int = 12, sentences: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for d in range(n_docs):
        lines = [f"ACT {d}."]
        for _ in range(sentences):
            lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))).capitalize() + ".")
        docs.append("\n".join(lines) + "\n")
    return docs


def write_text_corpus(folder: Path, **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, doc in enumerate(make_documents(**kw)):
        (folder / f"doc{i:02d}.txt").write_text(doc, encoding="utf-8")
    return folder
