"""Reading shards: every malformed input is one clear error naming the file and column, exit 2."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import shared_pu, write_embeddings

from search.cli import main
from trainers.data.pu import make_pu_split
from trainers.data.shards import DataError, read_table

X = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
LABEL = np.array([1, 0] * 10, dtype=np.int8)


def test_reads_file_folder_and_glob(tmp_path, pu_parquet):
    folder = read_table(pu_parquet)
    assert folder.x.shape == (400, 16) and folder.x.dtype == np.float32 and len(folder.files) == 2
    single = read_table(pu_parquet / "a.parquet")
    assert len(single) == 200
    globbed = read_table(str(pu_parquet / "*.parquet"))
    np.testing.assert_array_equal(globbed.x, folder.x)
    np.testing.assert_array_equal(globbed.label, folder.label)


def test_a_glob_star_stays_in_its_folder_as_in_a_shell_and_double_star_descends(tmp_path):
    write_embeddings(tmp_path / "data" / "a.parquet", X, label=LABEL)
    write_embeddings(tmp_path / "data" / "old" / "b.parquet", X[:5], label=LABEL[:5])
    assert len(read_table(str(tmp_path / "data" / "*.parquet"))) == 20, "old/b.parquet is not *.parquet"
    assert len(read_table(str(tmp_path / "data" / "**" / "*.parquet"))) == 25
    assert len(read_table(str(tmp_path / "data" / "*" / "*.parquet"))) == 5


def test_variable_length_lists_and_float16_are_accepted(tmp_path):
    emb = pa.array([row.astype(np.float16).tolist() for row in X], type=pa.list_(pa.float16()))
    pq.write_table(pa.table({"embedding": emb, "labelled": pa.array(LABEL)}), tmp_path / "f.parquet")
    t = read_table(tmp_path / "f.parquet")
    assert t.x.shape == (20, 8) and t.label is None and t.labelled.sum() == 10


def _bad_cases(tmp_path):
    cases = {}
    cases["missing embedding"] = (pq.write_table(pa.table({"label": LABEL}), p := tmp_path / "noemb.parquet") or p, "embedding")
    cases["missing labels"] = (write_embeddings(tmp_path / "nolab.parquet", X), "labelled")
    ragged = pa.array([[1.0, 2.0], [1.0, 2.0, 3.0]], type=pa.list_(pa.float32()))
    pq.write_table(pa.table({"embedding": ragged, "label": pa.array([1, 0], pa.int8())}), p := tmp_path / "ragged.parquet")
    cases["ragged"] = (p, "embedding")
    write_embeddings(tmp_path / "mixed" / "a.parquet", X, label=LABEL)
    write_embeddings(tmp_path / "mixed" / "b.parquet", X[:, :4], label=LABEL)
    cases["mixed dimensions"] = (tmp_path / "mixed", "embedding")
    nan = X.copy()
    nan[3, 2] = np.nan
    cases["nan"] = (write_embeddings(tmp_path / "nan.parquet", nan, label=LABEL), "embedding")
    inf = X.copy()
    inf[5, 0] = np.inf
    cases["inf"] = (write_embeddings(tmp_path / "inf.parquet", inf, label=LABEL), "embedding")
    cases["no labelled positives"] = (write_embeddings(tmp_path / "nopos.parquet", X, labelled=np.zeros(20, np.int8)), "labelled")
    cases["no positives at all"] = (write_embeddings(tmp_path / "nopos2.parquet", X, label=np.zeros(20, np.int8)), "label")
    cases["labels not 0/1"] = (write_embeddings(tmp_path / "two.parquet", X, label=np.full(20, 2, np.int8)), "label")
    cases["null label"] = (write_embeddings(tmp_path / "null.parquet", X, label=pa.array([None] + [1] * 19, pa.int8())), "label")
    cases["string embedding"] = (
        pq.write_table(pa.table({"embedding": pa.array([["a"]] * 2), "label": pa.array([1, 0])}), p := tmp_path / "str.parquet") or p,
        "embedding",
    )
    write_embeddings(tmp_path / "empty.parquet", X[:0], label=LABEL[:0])
    cases["no rows"] = (tmp_path / "empty.parquet", None)
    (tmp_path / "zero.parquet").write_bytes(b"")
    cases["empty file"] = (tmp_path / "zero.parquet", None)
    whole = write_embeddings(tmp_path / "whole.parquet", X, label=LABEL).read_bytes()
    (tmp_path / "trunc.parquet").write_bytes(whole[: len(whole) // 2])
    cases["truncated"] = (tmp_path / "trunc.parquet", None)
    cases["unreadable path"] = (tmp_path / "does-not-exist.parquet", None)
    (tmp_path / "emptydir").mkdir()
    cases["folder without shards"] = (tmp_path / "emptydir", None)
    cases["glob matching nothing"] = (str(tmp_path / "nothing-*.parquet"), None)
    write_embeddings(tmp_path / "disagree" / "a.parquet", X, label=LABEL)
    write_embeddings(tmp_path / "disagree" / "b.parquet", X, labelled=LABEL)
    cases["shards disagree on columns"] = (tmp_path / "disagree", "label")
    return cases


def test_every_malformed_input_is_one_clear_error(tmp_path):
    for case, (path, column) in _bad_cases(tmp_path).items():
        with pytest.raises(DataError) as info:
            make_pu_split(read_table(path), 0.5, seed=0)
        message = str(info.value)
        assert str(path).split("*")[0] in message or info.value.source in message, case
        if column:
            assert f"column '{column}'" in message, (case, message)


def test_cli_exits_2_and_writes_nothing_on_bad_input(tmp_path, capsys):
    for case, (path, _) in _bad_cases(tmp_path).items():
        out = tmp_path / f"out-{case.replace(' ', '_')}.json"
        code = main(["train-pu", "--train", str(path), "--epochs", "1", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2, case
        assert "error:" in err and "Traceback" not in err, case
        assert not out.exists(), case


def test_test_split_needs_the_truth(tmp_path, pu_parquet, capsys):
    test = write_embeddings(tmp_path / "test.parquet", np.zeros((4, 16)), labelled=np.array([1, 0, 0, 0], np.int8))
    assert main(["train-pu", "--train", str(pu_parquet), "--test", str(test), "--epochs", "1"]) == 2
    assert "column 'label'" in capsys.readouterr().err


def test_same_seed_same_labelling_and_split(pu_parquet):
    table = read_table(pu_parquet)
    a, b, c = (make_pu_split(table, 0.3, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.x_val, b.x_val)
    np.testing.assert_array_equal(a.data.labelled, b.data.labelled)
    assert not np.array_equal(a.data.labelled, c.data.labelled) or not np.array_equal(a.x_val, c.x_val)
    # SCAR: only positives are labelled, about the asked fraction of them
    labelled_truth = table.label[a.data.labelled]
    assert labelled_truth.all()
    assert labelled_truth.size == round(0.3 * table.label.sum())
    # the validation split keeps the labelled share of the data
    train_rows = np.r_[a.fold.train_positive, a.fold.train_unlabelled]
    assert abs(a.val_labelled.mean() - a.data.labelled[train_rows].mean()) < 0.05
    assert set(a.fold.val).isdisjoint(train_rows) and len(a.fold.val) + len(train_rows) == len(table)


def test_real_pu_mode_uses_the_given_labels(tmp_path):
    labelled = np.zeros(20, np.int8)
    labelled[:6] = 1
    path = write_embeddings(tmp_path / "real.parquet", X, labelled=labelled)
    split = make_pu_split(read_table(path), 0.1, seed=0)
    assert split.data.truth is None and split.true_prior is None
    assert len(split.fold.train_positive) + split.val_labelled.sum() == 6


def test_shared_sms_reads(tmp_path):
    table = read_table(shared_pu("sms") / "train.parquet")
    assert table.x.shape == (4460, 384)
    assert abs(np.linalg.norm(table.x[:50], axis=1) - 1).max() < 1e-4
