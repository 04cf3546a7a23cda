"""Byte-level BPE tokenizer (Hugging Face `tokenizers`), lossless: decode(encode(s)) == s for any text.

Byte-level pre-tokenisation maps every byte to a symbol, so there is no unknown token and no
normalisation; the ByteLevel decoder inverts it exactly.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from dimba.errors import DimbaError

EOS, PAD = "<|eos|>", "<|pad|>"

# One encode call of the tokenizers library keeps ~300 bytes of bookkeeping per token (measured: a 10 MB
# line took 1.9 GB), so long texts are encoded in pieces of half a megabyte, several pieces per call (the
# library encodes them in parallel), about 4M characters per call: a peak of the order of 1 GB.
PIECE_CHARS = 1 << 19
GROUP_CHARS = 1 << 22
# The byte-level pre-tokenizer (GPT-2 pattern) never puts a non-space and a following space in one
# pre-token, so a cut between the two cannot change the ids.
_SAFE_CUT = re.compile(r"\S(?=[ \t\r\n])")
_LOOKBACK = 4096


class Tokenizer:
    """Thin wrapper: encode/decode, the special ids, and (de)serialisation to the JSON string that travels
    inside checkpoints."""

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        # The vocabulary of a word-level tokenizer (the tasks': whole words, no pieces), or None for byte-level BPE.
        self.words = set(hf.get_vocab()) if json.loads(hf.to_str())["model"]["type"] == "WordLevel" else None
        self.eos_id = hf.token_to_id(EOS)
        self.pad_id = hf.token_to_id(PAD)
        if self.eos_id is None or self.pad_id is None:
            raise DimbaError(f"the tokenizer must define the special tokens {EOS} and {PAD}")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
        if vocab_size < 260:
            raise DimbaError(f"vocab_size must be at least 260 (256 bytes + specials), got {vocab_size}")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=[EOS, PAD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    @classmethod
    def from_str(cls, json_str: str) -> Tokenizer:
        if not isinstance(json_str, str):
            raise DimbaError(f"a tokenizer must be a JSON string, got {type(json_str).__name__}")
        try:
            return cls(HFTokenizer.from_str(json_str))
        except Exception as err:  # tokenizers raises a bare Exception on malformed JSON
            raise DimbaError(f"the tokenizer is not a valid tokenizer.json: {str(err).splitlines()[0]}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise DimbaError(f"tokenizer file not found: {path}")
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as err:  # tokenizers raises a bare Exception on malformed JSON
            raise DimbaError(f"{path} is not a valid tokenizer.json: {err}") from None

    def to_str(self) -> str:
        return self.hf.to_str()

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_str(), encoding="utf-8")
        tmp.replace(path)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_str().encode()).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        """Token ids of text. A word-level vocabulary (the reasoning tasks') refuses words it does not hold, which
        its tokenizer would otherwise turn into its unknown token silently."""
        encoding = self.hf.encode(text, add_special_tokens=False)
        if self.words is not None:
            unknown = [w for w in text.split() if w not in self.words]
            if unknown:
                raise DimbaError(f"unknown word {unknown[0]!r}: this model's vocabulary has only its task's words "
                                 f"({', '.join(sorted(self.words)[:8])}, ...)")
        return encoding.ids

    def encode_texts(self, texts: Iterable[str]) -> list[np.ndarray]:
        """The int32 ids of each text, with memory bounded whatever the texts' lengths: texts are split by
        `split_text` and the pieces encoded in groups of about GROUP_CHARS characters."""
        parts: list[list[np.ndarray]] = []
        group: list[tuple[int, str]] = []
        group_size = 0

        def encode_group():
            encodings = self.hf.encode_batch([piece for _, piece in group], add_special_tokens=False)
            for (owner, _), encoding in zip(group, encodings, strict=True):
                parts[owner].append(np.asarray(encoding.ids, dtype=np.int32))
            group.clear()

        for i, text in enumerate(texts):
            parts.append([])
            for piece in split_text(text):
                group.append((i, piece))
                group_size += len(piece)
                if group_size >= GROUP_CHARS:
                    encode_group()
                    group_size = 0
        if group:
            encode_group()
        return [np.concatenate(p) if p else np.zeros(0, dtype=np.int32) for p in parts]

    def decode(self, ids: Iterable[int], stop_at_eos: bool = False) -> str:
        ids = list(ids)
        if stop_at_eos and self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        return self.hf.decode(ids, skip_special_tokens=False)


def _last_safe_cut(text: str, start: int, end: int) -> int | None:
    cut = None
    for match in _SAFE_CUT.finditer(text, start, end):
        cut = match.end()
    return cut


def split_text(text: str, max_chars: int = PIECE_CHARS) -> Iterator[str]:
    """Pieces of at most max_chars characters, in order, cut where the pre-tokenizer always cuts (between a
    non-space and a space): encoding the pieces one by one gives exactly the ids of the whole text. Where a
    stretch of max_chars has no such place (binary junk, an endless word) it is cut there anyway, and only
    at that cut may the ids differ from encoding the whole."""
    start = 0
    while len(text) - start > max_chars:
        end = start + max_chars
        # Search the end of the window first: a full scan of normal text would make a match per word.
        cut = (_last_safe_cut(text, max(start + 1, end - _LOOKBACK), end)
               or _last_safe_cut(text, start + 1, end) or end)
        yield text[start:cut]
        start = cut
    yield text[start:]


def iter_texts(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """Yield texts up to max_chars characters in all, cutting the last one, in pieces (`split_text`):
    bounds tokenizer training time and memory on huge corpora and on a single huge document. The pieces
    are cut between pre-tokens, so the trainer's word counts are those of the whole texts."""
    left = max_chars
    for text in texts:
        if left <= 0:
            return
        yield from split_text(text[:left])
        left -= len(text)
