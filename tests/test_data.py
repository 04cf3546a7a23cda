"""Tokenizer, sources and the data module on local data only."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from dimba.data.datamodule import StreamingBlocks, TextDataModule, save_blocks
from dimba.data.sources import resolve_source
from dimba.data.tokenizer import Tokenizer, split_text
from dimba.errors import DimbaError
from tests.corpus import make_documents, write_text_corpus


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIMBA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(make_documents(), vocab_size=300)


@pytest.mark.parametrize("text", [
    "ROMEO:\nBut soft! what light through yonder window breaks?",
    "  leading and trailing spaces  \n\n\n",
    "日本語のテキスト, émigré, naïve, Ωμέγα, 😀🎭, \u200b zero-width",
    "\x00\x01\x07 control \t tabs \r\n CRLF \x7f",
    "",
])
def test_tokenizer_is_lossless(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_tokenizer_round_trips_through_json(tokenizer, tmp_path):
    path = tmp_path / "tok.json"
    tokenizer.save(path)
    again = Tokenizer.from_file(path)
    assert again.fingerprint == tokenizer.fingerprint
    assert again.encode("the noble king") == tokenizer.encode("the noble king")
    assert {tokenizer.eos_id, tokenizer.pad_id} == {0, 1}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DimbaError, match="not a valid tokenizer"):
        Tokenizer.from_file(tmp_path / "bad.json")


def test_decode_stops_at_eos(tokenizer):
    ids = tokenizer.encode("one two") + [tokenizer.eos_id] + tokenizer.encode(" three")
    assert tokenizer.decode(ids, stop_at_eos=True) == "one two"


def test_tokenizer_training_text_is_capped():
    from dimba.data.tokenizer import iter_texts
    assert list(iter_texts(["abcdef", "ghij", "kl"], 8)) == ["abcdef", "gh"]
    assert list(iter_texts(["x" * 100], 5)) == ["xxxxx"]


def test_packing_joins_with_eos_and_drops_the_remainder(tmp_path):
    path = tmp_path / "blocks.npy"
    docs = [np.array(d, dtype=np.int32) for d in ([1, 2, 3], [4, 5], [6])]
    save_blocks(path, iter(docs), n_tokens=9, eos_id=0, seq_len=4)
    blocks = np.load(path)
    assert blocks.tolist() == [[1, 2, 3, 0], [4, 5, 0, 6]]  # 9 tokens -> 2 blocks, "0" tail dropped
    assert blocks.dtype == np.int32
    assert [p.name for p in tmp_path.iterdir()] == ["blocks.npy"]  # no temporary file left behind


def test_long_texts_are_encoded_in_pieces_with_the_same_ids(tokenizer):
    words = ["the", "king", "is", "dead,", "long", "live", "  the", "\n\n", "king!\t", "émigré", "'s", "99"]
    rng = np.random.default_rng(0)
    text = " ".join(rng.choice(words, 3000)) + "  \n"
    pieces = list(split_text(text, max_chars=500))
    assert "".join(pieces) == text and len(pieces) > 20 and max(map(len, pieces)) <= 500
    assert np.concatenate([tokenizer.encode(p) for p in pieces]).tolist() == tokenizer.encode(text)
    # encode_texts splits internally; documents stay separate and in order
    ids = tokenizer.encode_texts([text, "", "one two"])
    assert [x.tolist() for x in ids] == [tokenizer.encode(text), [], tokenizer.encode("one two")]


def test_text_without_a_safe_cut_is_cut_hard():
    pieces = list(split_text("x" * 1050, max_chars=100))
    assert "".join(pieces) == "x" * 1050 and [len(p) for p in pieces] == [100] * 10 + [50]


def test_source_errors(tmp_path):
    with pytest.raises(DimbaError, match="corpus not found"):
        resolve_source(str(tmp_path / "missing.txt"))
    with pytest.raises(DimbaError, match="matched no files"):
        resolve_source(str(tmp_path / "*.txt"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DimbaError, match="holds no corpus files"):
        resolve_source(str(tmp_path / "empty_dir"))
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.txt").write_text("x")
    (tmp_path / "mixed" / "b.csv").write_text("text\nx\n")
    with pytest.raises(DimbaError, match="mixes file types"):
        resolve_source(str(tmp_path / "mixed"))


def test_unreadable_file_is_named(tmp_path, monkeypatch):
    import dimba.data.sources as sources
    folder = write_text_corpus(tmp_path / "c", n_docs=2)
    locked = folder / "doc01.txt"
    real_access = sources.os.access
    # CI runs as root, for whom chmod 000 still reads: deny access to this one file instead.
    monkeypatch.setattr(sources.os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    with pytest.raises(DimbaError, match=f"cannot read corpus file {locked}"):
        resolve_source(str(folder))


def make_dm(source, **kw):
    args = dict(source=str(source), tokenizer_vocab_size=300, seq_len=32, batch_size=4)
    args.update(kw)
    return TextDataModule(**args)


def test_text_folder_is_tokenised_packed_and_split_deterministically(tmp_path):
    folder = write_text_corpus(tmp_path / "corpus")
    dm = make_dm(folder)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.vocab_size <= 300 and len(dm.train_set) > 50 and len(dm.val_set) > 0
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 32) and batch.dtype.is_floating_point is False
    # The last document is the validation set: its text starts the first validation block.
    assert dm.tokenizer.decode(dm.val_set[0].tolist()).startswith("ACT 11.")
    again = make_dm(folder)
    again.setup("fit")
    assert again.tokenizer.fingerprint == dm.tokenizer.fingerprint
    assert np.array_equal(again.val_set.blocks, dm.val_set.blocks)


def test_cache_is_reused_and_keyed_by_seq_len(tmp_path):
    folder = write_text_corpus(tmp_path / "corpus")
    dm = make_dm(folder)
    dm.prepare_data()
    packed = sorted((tmp_path / "cache" / "packed").glob("*.npy"))
    mtimes = [p.stat().st_mtime_ns for p in packed]
    make_dm(folder).prepare_data()
    assert [p.stat().st_mtime_ns for p in packed] == mtimes
    make_dm(folder, seq_len=16).prepare_data()
    assert len(list((tmp_path / "cache" / "packed").glob("*.npy"))) == 4


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_tabular_sources_with_a_text_column(tmp_path, fmt):
    import pandas as pd
    docs = make_documents(n_docs=10)
    frame = pd.DataFrame({"id": range(len(docs)), "body": docs})
    path = tmp_path / f"corpus.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")))
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    dm = make_dm(path, text_column="body")
    dm.setup("fit")
    assert len(dm.train_set) > 10
    with pytest.raises(DimbaError, match="no column 'text'"):
        _ = make_dm(path, text_column="text").vocab_size


def test_empty_and_whitespace_corpora_fail_clearly(tmp_path):
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "b.txt").write_text("   \n\t\n  ")
    with pytest.raises(DimbaError, match="is empty"):
        _ = make_dm(tmp_path / "*.txt").vocab_size


def test_invalid_utf8_is_replaced_with_a_warning(tmp_path, caplog):
    folder = write_text_corpus(tmp_path / "corpus", n_docs=4)
    (folder / "doc00.txt").write_bytes(b"bad bytes \xff\xfe here\n" + (folder / "doc00.txt").read_bytes())
    with caplog.at_level(logging.WARNING):
        dm = make_dm(folder)
        dm.setup("fit")
    assert "not valid UTF-8" in caplog.text
    assert len(dm.train_set) > 0


def test_streaming_shards_are_disjoint(tmp_path, tokenizer):
    import datasets
    docs = datasets.Dataset.from_dict({"text": make_documents(n_docs=8)}).to_iterable_dataset(num_shards=4)
    ranks = [list(StreamingBlocks(docs, tokenizer, 16, rank, 2)) for rank in (0, 1)]
    assert ranks[0] and ranks[1]
    first = {tuple(b.tolist()) for b in ranks[0]}
    assert not first & {tuple(b.tolist()) for b in ranks[1]}


def test_streaming_data_module_on_a_local_file(tmp_path):
    folder = write_text_corpus(tmp_path / "corpus", n_docs=6)
    dm = make_dm(folder, streaming=True, val_stream_docs=1)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 32)


def test_the_sampler_starts_where_the_batches_consumed_say():
    """Data epoch and position follow the batches consumed (the global step), whatever Lightning's epoch says;
    ranks get disjoint shards."""
    from dimba.data.sampler import ResumableSampler

    consumed = [0]
    make = lambda rank: ResumableSampler(list(range(40)), batch_size=4, num_replicas=2, rank=rank, seed=3,
                                         consumed=lambda: consumed[0])
    ranks = [make(0), make(1)]
    first = [list(r) for r in ranks]
    assert len(first[0]) == 20 and not set(first[0]) & set(first[1])
    consumed[0] = 2  # two batches of epoch 0 trained: the rest of epoch 0 comes next
    assert list(ranks[0]) == first[0][8:]
    ranks[0].set_epoch(7)  # Lightning's counter is ignored
    assert list(ranks[0]) == first[0][8:]
    consumed[0] = 5  # 5 batches per epoch: epoch 1 starts, with another permutation
    second = list(ranks[0])
    assert len(second) == 20 and second != first[0]
    consumed[0] = 6
    assert list(ranks[0]) == second[4:]
