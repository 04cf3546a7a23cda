"""Byte-level BPE tokenizer (Hugging Face `tokenizers`), lossless: decode(encode(s)) == s for any text.

Byte-level pre-tokenisation maps every byte to a symbol, so there is no unknown token and no
normalisation; the ByteLevel decoder inverts it exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from dimba.errors import DimbaError

EOS, PAD = "<|eos|>", "<|pad|>"


class Tokenizer:
    """Thin wrapper: encode/decode, the special ids, and (de)serialisation to the JSON string that travels
    inside checkpoints."""

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
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
        return cls(HFTokenizer.from_str(json_str))

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
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], stop_at_eos: bool = False) -> str:
        ids = list(ids)
        if stop_at_eos and self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        return self.hf.decode(ids, skip_special_tokens=False)


def iter_texts(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """Yield texts up to max_chars characters in all, cutting the last one (bounds tokenizer training time
    and memory on huge corpora, and on a single huge document)."""
    left = max_chars
    for text in texts:
        if left <= 0:
            return
        yield text[:left]
        left -= len(text)
