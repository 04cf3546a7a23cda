"""TextDataModule: corpus -> byte-level BPE -> fixed-length packed blocks of token ids.

Documents are tokenised once (`datasets.map`, multi-process), joined with end-of-sequence separators and
cut into blocks of seq_len tokens, cached on disk under a key of (source, tokenizer, seq_len, split). The
train/validation split is by document (the last `val_fraction` of them; a single document is split at a
character position), so it is deterministic. Under DDP, Lightning's distributed sampler gives each rank its
own shard of the training blocks; a streamed corpus is sharded with `split_dataset_by_node`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from dimba.data.sampler import ResumableSampler
from dimba.data.shakespeare import cache_dir as default_cache_dir
from dimba.data.sources import Source, load_documents, resolve_source
from dimba.data.tasks import TASK_PREFIX, TaskBlocks, task_split_arrays, task_tokenizer
from dimba.data.tokenizer import Tokenizer, iter_texts
from dimba.errors import DimbaError

log = logging.getLogger(__name__)


def is_text(value) -> bool:
    """A document: a string with something besides whitespace (not a null, not a number)."""
    return isinstance(value, str) and bool(value.strip())


class BlockDataset(Dataset):
    """Rows of a (n_blocks, seq_len) int32 array as int64 tensors."""

    def __init__(self, blocks: np.ndarray):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.blocks[i].astype(np.int64))


class StreamingBlocks(IterableDataset):
    """Packs a streamed corpus into blocks on the fly; each rank (and data-loader worker) reads its shard."""

    def __init__(self, docs, tokenizer: Tokenizer, seq_len: int, rank: int, world_size: int):
        self.docs, self.tokenizer, self.seq_len = docs, tokenizer, seq_len
        self.rank, self.world_size = rank, world_size

    def __iter__(self):
        from datasets.distributed import split_dataset_by_node

        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        shard = split_dataset_by_node(self.docs, rank=self.rank * workers + worker,
                                      world_size=self.world_size * workers)
        eos = np.array([self.tokenizer.eos_id], dtype=np.int32)
        carry = np.zeros(0, dtype=np.int32)
        for doc in shard:
            if not is_text(doc["text"]):  # a null or a number in a streamed text column: not a document
                continue
            ids = np.concatenate([carry, *self.tokenizer.encode_texts([doc["text"]]), eos])
            n_blocks = len(ids) // self.seq_len
            for block in ids[:n_blocks * self.seq_len].reshape(n_blocks, self.seq_len):
                yield torch.from_numpy(block.astype(np.int64))
            carry = ids[n_blocks * self.seq_len:]


def pack_into(blocks: np.ndarray, docs: Iterable[np.ndarray], eos_id: int) -> None:
    """Fill blocks (n_blocks, seq_len) with the documents' ids joined by EOS separators, in order, and stop
    when it is full (the caller sizes it to drop less than a block)."""
    flat = blocks.reshape(-1)
    pos = 0
    for ids in docs:
        take = min(len(ids), flat.size - pos)
        flat[pos:pos + take] = ids[:take]
        pos += take
        if pos == flat.size:
            return
        flat[pos] = eos_id
        pos += 1
        if pos == flat.size:
            return


def save_blocks(path: Path, docs: Iterable[np.ndarray], n_tokens: int, eos_id: int, seq_len: int) -> None:
    """Pack the documents (n_tokens ids in all, separators included) into an int32 (n_blocks, seq_len) .npy
    written through a memory map (the corpus never has to fit in memory), then renamed into place (atomic)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    blocks = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int32, shape=(n_tokens // seq_len, seq_len))
    pack_into(blocks, docs, eos_id)
    blocks.flush()
    del blocks  # closes the map before the rename
    tmp.replace(path)


def _encode_batch(batch: dict, tokenizer: Tokenizer) -> dict:
    ids = tokenizer.encode_texts(batch["text"])
    return {"ids": ids, "n": [len(x) for x in ids]}


def _iter_ids(encoded, batch_size: int = 256) -> Iterator[np.ndarray]:
    for batch in encoded.select_columns(["ids"]).with_format("numpy").iter(batch_size=batch_size):
        yield from batch["ids"]


class TextDataModule(L.LightningDataModule):
    """
    Args:
        source: the corpus. None or "shakespeare": the embedded corpus; a file, folder or glob of
            .txt/.md (one document per file), .jsonl/.json, .parquet or .csv; otherwise a hub dataset name.
        text_column: the column holding the text (JSONL / Parquet / CSV / hub).
        hub_config, hub_split: the hub dataset's configuration and split.
        streaming: stream the corpus instead of tokenising it to disk (for corpora that do not fit).
        tokenizer_path: a tokenizer.json to use; None trains a byte-level BPE on the training split.
        tokenizer_vocab_size: size of the BPE vocabulary to train (ignored with tokenizer_path); a small
            corpus can give fewer. The model's vocab_size is linked to the tokenizer's actual size.
        seq_len: tokens per training block.
        batch_size: blocks per batch (per device).
        val_fraction: share of documents held out for validation.
        num_workers: data-loader worker processes. num_proc: processes for tokenisation.
        cache_dir: where tokenizers and packed blocks are cached ($DIMBA_CACHE or ~/.cache/dimba).
        tokenizer_train_chars: at most this many characters of text train the tokenizer.
        val_stream_docs: with streaming, this many documents at the start form the validation set.
        shuffle_seed: the training order of epoch e is a permutation drawn from (shuffle_seed, e), so an
            interrupted run resumes with the same data from the same position.
        task_options: with source `task:NAME` (a reasoning task, `dimba.data.tasks`), its knobs and n_train,
            n_val, n_test, seed; batches then say which positions are given; validation runs on the val split,
            `dimba test` on the test split.
    """

    def __init__(self, source: str | None = None, text_column: str = "text", hub_config: str | None = None,
                 hub_split: str = "train", streaming: bool = False, tokenizer_path: str | None = None,
                 tokenizer_vocab_size: int = 4096, seq_len: int = 128, batch_size: int = 32, val_fraction: float = 0.05,
                 num_workers: int = 0, num_proc: int = 1, cache_dir: str | None = None,
                 tokenizer_train_chars: int = 50_000_000, val_stream_docs: int = 200, shuffle_seed: int = 0,
                 task_options: dict | None = None):
        super().__init__()
        if seq_len < 2:
            raise DimbaError(f"seq_len must be at least 2, got {seq_len}")
        if not 0 < val_fraction < 1:
            raise DimbaError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self._source: Source | None = None
        self._tokenizer: Tokenizer | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None  # a task's test split; text has none apart from validation
        self.sampler: ResumableSampler | None = None

    # ---------------------------------------------------------------- corpus and tokenizer (lazy)
    @property
    def is_task(self) -> bool:
        return isinstance(self.hparams.source, str) and self.hparams.source.startswith(TASK_PREFIX)

    @property
    def source(self) -> Source:
        if self._source is None:
            hp = self.hparams
            self._source = resolve_source(hp.source, hp.hub_config, hp.hub_split)
        return self._source

    @property
    def _corpus_key(self) -> str:
        """What decides the documents of each split: the files (or hub address), the column, the split."""
        hp = self.hparams
        return f"{self.source.fingerprint}|{hp.text_column}|{hp.val_fraction}|{hp.streaming}"

    def _split_documents(self):
        """(train texts dataset, val texts dataset) for map-style corpora."""
        docs = load_documents(self.source, self.hparams.text_column)
        total = len(docs)
        docs = docs.filter(lambda b: [is_text(t) for t in b["text"]], batched=True)
        if len(docs) == 0:
            column = "text" if self.source.builder == "text" else self.hparams.text_column
            raise DimbaError(f"the corpus {self.source.name!r} is empty (no non-blank text in column {column!r}: its "
                             "values are blank, null or numbers; --data.text_column names the text column)")
        if len(docs) < total:
            log.warning("%d of %d documents of %s are not text (blank, null or a number) and were skipped",
                        total - len(docs), total, self.source.name)
        if len(docs) == 1:
            text = docs[0]["text"]
            cut = int(len(text) * (1 - self.hparams.val_fraction))
            import datasets
            return (datasets.Dataset.from_dict({"text": [text[:cut]]}),
                    datasets.Dataset.from_dict({"text": [text[cut:]]}))
        n_val = max(1, round(self.hparams.val_fraction * len(docs)))
        return docs.select(range(len(docs) - n_val)), docs.select(range(len(docs) - n_val, len(docs)))

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = self._load_or_train_tokenizer()
        return self._tokenizer

    def _load_or_train_tokenizer(self) -> Tokenizer:
        hp = self.hparams
        if self.is_task:
            return task_tokenizer()
        if hp.tokenizer_path:
            return Tokenizer.from_file(hp.tokenizer_path)
        key = f"{self._corpus_key}|{hp.tokenizer_vocab_size}|{hp.tokenizer_train_chars}"
        key = hashlib.sha256(key.encode()).hexdigest()[:16]
        path = self.cache / "tokenizers" / f"bpe{hp.tokenizer_vocab_size}-{key}.json"
        if path.exists():
            return Tokenizer.from_file(path)
        if hp.streaming:
            texts = (d["text"] for d in load_documents(self.source, hp.text_column, streaming=True)
                     if is_text(d["text"]))
        else:
            texts = self._split_documents()[0]["text"]
        log.info("training a byte-level BPE tokenizer (vocab %d) on %s", hp.tokenizer_vocab_size, self.source.name)
        tokenizer = Tokenizer.train(iter_texts(texts, hp.tokenizer_train_chars), hp.tokenizer_vocab_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        tokenizer.save(path)
        return tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    # ---------------------------------------------------------------- packed blocks (cached)
    def _cache_paths(self) -> dict[str, Path]:
        hp = self.hparams
        key = f"{self._corpus_key}|{self.tokenizer.fingerprint}|{hp.seq_len}"
        key = hashlib.sha256(key.encode()).hexdigest()[:16]
        folder = self.cache / "packed"
        return {split: folder / f"{key}-{split}.npy" for split in ("train", "val")}

    def prepare_data(self) -> None:
        """Tokenise and pack once (rank 0 of each node); later runs read the cache."""
        if self.is_task:
            task_split_arrays(self.hparams.source, self.hparams.task_options, self.hparams.seq_len, self.cache)
            return
        if self.hparams.streaming:
            return
        paths = self._cache_paths()
        if all(p.exists() for p in paths.values()):
            return
        tok, hp = self.tokenizer, self.hparams
        for split, docs in zip(("train", "val"), self._split_documents(), strict=True):
            encoded = docs.map(_encode_batch, fn_kwargs={"tokenizer": tok}, batched=True, remove_columns=["text"],
                               num_proc=hp.num_proc if len(docs) >= 2 * hp.num_proc else None)
            n_tokens = sum(encoded["n"]) + len(encoded)  # + one EOS after each document
            if n_tokens < hp.seq_len:
                raise DimbaError(f"the {split} split of {self.source.name!r} has fewer than seq_len = "
                                 f"{hp.seq_len} tokens; use a larger corpus or a smaller seq_len")
            paths[split].parent.mkdir(parents=True, exist_ok=True)
            save_blocks(paths[split], _iter_ids(encoded), n_tokens, tok.eos_id, hp.seq_len)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        if self.is_task:
            arrays = task_split_arrays(hp.source, hp.task_options, hp.seq_len, self.cache)
            self.train_set = TaskBlocks(arrays["train_tokens"], arrays["train_given"])
            # Validation on its own split: the test split is for `dimba test` and `dimba eval --task` only.
            self.val_set = TaskBlocks(arrays["val_tokens"], arrays["val_given"])
            self.test_set = TaskBlocks(arrays["test_tokens"], arrays["test_given"])
            return
        if hp.streaming:
            docs = load_documents(self.source, hp.text_column, streaming=True)
            rank = self.trainer.global_rank if self.trainer else 0
            world = self.trainer.world_size if self.trainer else 1
            self.val_set = StreamingBlocks(docs.take(hp.val_stream_docs), self.tokenizer, hp.seq_len, 0, 1)
            self.train_set = StreamingBlocks(docs.skip(hp.val_stream_docs), self.tokenizer, hp.seq_len, rank, world)
            return
        paths = self._cache_paths()
        if not all(p.exists() for p in paths.values()):
            self.prepare_data()
        self.train_set = BlockDataset(np.load(paths["train"], mmap_mode="r"))
        self.val_set = BlockDataset(np.load(paths["val"], mmap_mode="r"))
        log.info("data: %d train / %d val blocks of %d tokens", len(self.train_set), len(self.val_set), hp.seq_len)

    def _loader(self, dataset: Dataset, sampler=None, drop_last: bool = False) -> DataLoader:
        hp = self.hparams
        # Its own generator: creating an iterator then draws from it, not from the global RNG that the
        # training step uses, so validations and epoch starts do not shift the training's random stream.
        return DataLoader(dataset, batch_size=hp.batch_size, sampler=sampler, num_workers=hp.num_workers,
                          drop_last=drop_last, persistent_workers=hp.num_workers > 0,
                          generator=torch.Generator().manual_seed(hp.shuffle_seed))

    def train_dataloader(self) -> DataLoader:
        if self.hparams.streaming:
            return self._loader(self.train_set)
        world = self.trainer.world_size if self.trainer else 1
        rank = self.trainer.global_rank if self.trainer else 0
        self.sampler = ResumableSampler(self.train_set, self.hparams.batch_size, num_replicas=world, rank=rank,
                                        seed=self.hparams.shuffle_seed, consumed=self._batches_consumed)
        return self._loader(self.train_set, self.sampler, drop_last=True)

    def _batches_consumed(self) -> int:
        """Training batches this rank has consumed: one per optimizer step and accumulated gradient (the
        trainer's global step is in every checkpoint, so a resumed run knows it too)."""
        if self.trainer is None:
            return 0
        return self.trainer.global_step * self.trainer.accumulate_grad_batches

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set if self.test_set is not None else self.val_set)
