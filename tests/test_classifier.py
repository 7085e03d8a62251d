"""A classifier you can keep: train-pu --save, PUClassifier.load(DIR).predict(x), lossforge
predict; bad model folders and mismatched dimensions are one clear error, nothing written."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import write_embeddings

from search.cli import main
from trainers.classifier import META_FILE, WEIGHTS_FILE, PUClassifier
from trainers.data.shards import read_table
from trainers.errors import DataError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A classifier trained on a small separable problem, plus its data."""
    root = tmp_path_factory.mktemp("clf")
    rng = np.random.default_rng(0)
    label = (rng.random(600) < 0.4).astype(np.int8)
    x = rng.normal(size=(600, 12)) + 2.0 * label[:, None] * np.eye(12)[0]
    write_embeddings(root / "train" / "a.parquet", x[:300], label=label[:300])
    write_embeddings(root / "train" / "b.parquet", x[300:], label=label[300:])
    write_embeddings(root / "test.parquet", x, label=label, id=np.arange(600) * 10)
    out = root / "result.json"
    assert main(["train-pu", "--train", str(root / "train"), "--test", str(root / "test.parquet"), "--epochs", "4",
                 "--hidden", "32", "--labelled-frac", "0.3", "--save", str(root / "model"), "--out", str(out)]) == 0
    return root, json.loads(out.read_text())


def test_saved_classifier_reproduces_the_run(saved):
    root, result = saved
    clf = PUClassifier.load(root / "model")
    assert sorted(p.name for p in (root / "model").iterdir()) == [META_FILE, WEIGHTS_FILE]
    assert clf.dim == 12 and clf.meta["loss"] == "pu-taylor-v2" and clf.meta["config"]["hidden"] == 32
    assert clf.threshold == pytest.approx(result["threshold"]) and clf.meta["val_fitness"] == pytest.approx(result["val_fitness"])
    test = read_table(root / "test.parquet")
    from trainers.metrics import classification_metrics

    metrics = classification_metrics(clf.logits(test.x), test.label, clf.threshold_logit)
    assert metrics["auc"] == pytest.approx(result["test_auc"], abs=1e-6)
    assert metrics["f1"] == pytest.approx(result["test_f1"], abs=1e-6)
    assert set(np.unique(clf.predict(test.x))) <= {0, 1}
    np.testing.assert_allclose(clf.scores(test.x.astype(np.float16)), clf.scores(test.x), atol=2e-2)


def test_predict_writes_ids_scores_and_predictions(saved, tmp_path, capsys):
    root, _ = saved
    out = tmp_path / "scores.parquet"
    assert main(["predict", "--model", str(root / "model"), "--data", str(root / "test.parquet"), "--out", str(out),
                 "--id-column", "id"]) == 0
    table = pq.read_table(out)
    assert table.column_names == ["id", "score", "prediction"]
    assert table.column("id").to_pylist() == list(range(0, 6000, 10))
    clf = PUClassifier.load(root / "model")
    np.testing.assert_allclose(table.column("score").to_numpy(), clf.scores(read_table(root / "test.parquet").x))
    folder = tmp_path / "per-shard"
    assert main(["predict", "--model", str(root / "model"), "--data", str(root / "train"), "--out", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert pq.read_table(folder / "part-00001.parquet").num_rows == 300


def _broken_models(root, tmp_path):
    model = root / "model"
    cases = {}
    cases["missing folder"] = (tmp_path / "nowhere", "no such file")
    (tmp_path / "not-json").mkdir()
    (tmp_path / "not-json" / META_FILE).write_text("{oops")
    cases["corrupt classifier.json"] = (tmp_path / "not-json", "invalid JSON")
    for name, edit, words in [("foreign", lambda m: m.update(format="other"), "field 'format'"),
                              ("no dim", lambda m: m.pop("dim"), "field 'dim'"),
                              ("bad threshold", lambda m: m.update(threshold_logit="x"), "field 'threshold_logit'"),
                              ("wrong dim", lambda m: m.update(dim=7), "tensor 'weight.0'")]:
        folder = tmp_path / name.replace(" ", "-")
        folder.mkdir()
        meta = json.loads((model / META_FILE).read_text())
        edit(meta)
        (folder / META_FILE).write_text(json.dumps(meta))
        (folder / WEIGHTS_FILE).write_bytes((model / WEIGHTS_FILE).read_bytes())
        cases[name] = (folder, words)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / META_FILE).write_bytes((model / META_FILE).read_bytes())
    weights = (model / WEIGHTS_FILE).read_bytes()
    (truncated / WEIGHTS_FILE).write_bytes(weights[: len(weights) // 2])
    cases["truncated weights"] = (truncated, "truncated")
    return cases


def test_bad_model_folders_are_one_line_and_write_nothing(saved, tmp_path, capsys):
    root, _ = saved
    for case, (folder, words) in _broken_models(root, tmp_path).items():
        with pytest.raises(DataError, match=words):
            PUClassifier.load(folder)
        out = tmp_path / f"{case}.parquet"
        assert main(["predict", "--model", str(folder), "--data", str(root / "test.parquet"), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, case
        assert not out.exists(), case


def test_mismatched_dimensions_and_unsafe_outputs_are_refused(saved, tmp_path, capsys):
    root, _ = saved
    model = str(root / "model")
    write_embeddings(tmp_path / "wide.parquet", np.zeros((5, 20)), label=np.zeros(5, np.int8))
    assert main(["predict", "--model", model, "--data", str(tmp_path / "wide.parquet"), "--out", str(tmp_path / "o.parquet")]) == 2
    assert "dimension 20, the classifier" in capsys.readouterr().err
    with pytest.raises(DataError, match="dimension 20"):
        PUClassifier.load(model).predict(np.zeros((2, 20)))
    assert main(["predict", "--model", model, "--data", str(root / "test.parquet"), "--out", str(root / "test.parquet"),
                 "--overwrite"]) == 2
    assert "is an input" in capsys.readouterr().err
    assert main(["predict", "--model", model, "--data", str(root / "test.parquet"), "--out", str(tmp_path / "o.parquet"),
                 "--id-column", "nope"]) == 2
    assert "column 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists()
    # train-pu --save onto a folder that holds something: refused before training
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("keep")
    assert main(["train-pu", "--smoke-test", "--save", str(full)]) == 2
    assert "not empty" in capsys.readouterr().err and [p.name for p in full.iterdir()] == ["mine.txt"]
