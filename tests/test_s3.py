"""Data in object storage, against a real S3-compatible server (moto's) on loopback: reading
shards, folders and globs by URI; one-line errors for a missing bucket, key or access; the
classifier and predictions written back to the bucket."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import write_embeddings
from s3server import moto_server, s3_environment, upload_folder

from search.cli import main
from trainers.classifier import PUClassifier
from trainers.data.shards import read_table
from trainers.errors import DataError

BUCKET = "lossforge-data"


@pytest.fixture(scope="module")
def s3():
    boto3 = pytest.importorskip("boto3")
    with moto_server() as url, s3_environment(url):
        client = boto3.client("s3", endpoint_url=url)
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture
def pool(tmp_path, s3, pu_parquet):
    """The two-shard pu_parquet folder, uploaded under a fresh prefix; returns its URI."""
    prefix = f"pool-{tmp_path.name}"
    upload_folder(s3, BUCKET, pu_parquet, prefix)
    return f"s3://{BUCKET}/{prefix}"


def test_reads_a_folder_a_file_and_a_glob_by_uri(pool, pu_parquet):
    local = read_table(pu_parquet)
    remote = read_table(pool)
    np.testing.assert_array_equal(remote.x, local.x)
    np.testing.assert_array_equal(remote.label, local.label)
    assert remote.files == [f"{pool}/a.parquet", f"{pool}/b.parquet"]
    assert len(read_table(f"{pool}/b.parquet")) == 200
    assert read_table(f"{pool}/*.parquet").files == remote.files


def test_storage_errors_are_one_line_naming_the_file(pool, s3, tmp_path):
    cases = {"s3://no-such-bucket-here/x.parquet": "bucket not found",
             "s3://no-such-bucket-here/folder/": "bucket not found",
             f"{pool}/missing.parquet": "no such key",
             f"{pool}-nothing/": "no such key"}
    for uri, words in cases.items():
        with pytest.raises(DataError) as info:
            read_table(uri)
        assert words in str(info.value) and uri.rstrip("/") in str(info.value) and "\n" not in str(info.value), uri
    # a damaged shard in the bucket names the file and the column, as locally
    x = np.zeros((4, 3), np.float32)
    x[1, 1] = np.nan
    write_embeddings(tmp_path / "nan.parquet", x, label=np.array([1, 0, 0, 1], np.int8))
    s3.upload_file(str(tmp_path / "nan.parquet"), BUCKET, "bad/nan.parquet")
    with pytest.raises(DataError, match=r"bad/nan.parquet, column 'embedding': 1 rows contain NaN"):
        read_table(f"s3://{BUCKET}/bad/nan.parquet")


def test_access_denied_is_one_line():
    # This server checks credentials: the test's keys are unknown to it, so every request is refused (403).
    with moto_server(enforce_auth=True) as url, s3_environment(url):
        uri = "s3://locked-bucket/x.parquet"
        with pytest.raises(DataError) as info:
            read_table(uri)
        assert "access denied" in str(info.value) and uri in str(info.value) and "\n" not in str(info.value)


def test_train_save_and_predict_to_the_bucket(pool, s3, tmp_path, capsys):
    model = f"s3://{BUCKET}/models/{tmp_path.name}"
    assert main(["train-pu", "--train", pool, "--epochs", "2", "--hidden", "16", "--save", model]) == 0
    clf = PUClassifier.load(model)
    assert clf.dim == 16 and 0 < clf.threshold < 1 and clf.meta["train"] == pool
    out = f"s3://{BUCKET}/scores/{tmp_path.name}.parquet"
    assert main(["predict", "--model", model, "--data", pool, "--out", out]) == 0
    body = s3.get_object(Bucket=BUCKET, Key=f"scores/{tmp_path.name}.parquet")["Body"].read()
    (tmp_path / "scores.parquet").write_bytes(body)
    scores = pq.read_table(tmp_path / "scores.parquet")
    assert scores.column_names == ["score", "prediction"] and scores.num_rows == 400
    np.testing.assert_allclose(scores.column("score").to_numpy(), clf.scores(read_table(pool).x), rtol=1e-6)
    # again without --overwrite: refused, the object unchanged
    assert main(["predict", "--model", model, "--data", pool, "--out", out]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # a classifier in a bucket that does not exist
    assert main(["predict", "--model", "s3://nowhere-bucket/m", "--data", pool, "--out", str(tmp_path / "o.parquet")]) == 2
    assert "bucket not found" in capsys.readouterr().err


def test_train_pu_out_to_a_uri_lands_in_the_bucket_not_in_a_local_folder(pool, s3, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = f"s3://{BUCKET}/results/{tmp_path.name}.json"
    assert main(["train-pu", "--train", pool, "--epochs", "1", "--hidden", "16", "--out", out]) == 0
    body = s3.get_object(Bucket=BUCKET, Key=f"results/{tmp_path.name}.json")["Body"].read()
    assert json.loads(body)["status"] == "ok"
    assert not (tmp_path / "s3:").exists()  # the old writer made ./s3:/bucket/... here
    assert main(["train-pu", "--train", pool, "--epochs", "1", "--hidden", "16", "--out", out]) == 2  # exists: refused
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.slow
def test_search_on_a_sample_then_train_on_everything_then_predict_all_from_the_bucket(pool, s3, tmp_path, capsys):
    """The issue's whole flow from s3://: a search on a stratified sample, the found loss trained
    on the full pool by two data-parallel workers, the classifier saved to the bucket, and
    predictions written back to it by Ray tasks."""
    import ray

    from search.engine.driver import RAY_ENV

    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": RAY_ENV}, log_to_driver=False)
    try:
        storage = tmp_path / "results"
        assert main(["search", "--train", pool, "--sample-rows", "200", "--budget", "2", "--pack", "2", "--epochs", "1",
                     "--concurrency", "1", "--rungs", "none", "--reevaluate", "0", "--name", "s3", "--storage",
                     str(storage)]) == 0
        spec = json.loads((storage / "s3" / "search.json").read_text())
        assert spec["train"] == [pool] and spec["task_options"]["sample_rows"] == 200
        sample = read_table(storage / "s3" / "sample-0.parquet")
        assert abs(len(sample) - 200) <= 1
        model = f"s3://{BUCKET}/models/full-{tmp_path.name}"
        assert main(["train-pu", "--train", pool, "--workers", "2", "--cpus-per-worker", "0.5", "--epochs", "2",
                     "--loss", str(storage / "s3" / "best_loss.json"), "--save", model,
                     "--run-dir", str(tmp_path / "run")]) == 0
        metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
        assert metrics["n_rows"] == 400 and [w["rows"] for w in metrics["workers"]] == [200, 200]
        assert metrics["replicas_in_sync"] and len(metrics["history"]) == 2
        clf = PUClassifier.load(model)
        assert clf.meta["loss_spec"]["family"] == "taylor" and clf.meta["workers"] == 2
        out = f"s3://{BUCKET}/scores-{tmp_path.name}"
        assert main(["predict", "--model", model, "--data", pool, "--out", out]) == 0
        assert "on Ray" in capsys.readouterr().out
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"scores-{tmp_path.name}/")["Contents"])
        assert keys == [f"scores-{tmp_path.name}/part-00000.parquet", f"scores-{tmp_path.name}/part-00001.parquet"]
    finally:
        ray.shutdown()
