"""The bad-input corpus: every command, fed malformed or hostile input, answers with exit 2 and
one line naming the file and column (or the option), prints no traceback, and creates or
changes no file -- neither its inputs nor an existing results folder (checksums before/after).

Each case is (id, argv, words the message must contain); ``{W}`` is the world's root folder.
None of them may start Ray: every check runs before anything is written or started.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_embeddings
from test_data import _bad_cases

from search.cli import main
from search.engine.evaluations import EvaluationLog
from search.engine.options import SearchOptions

X = np.random.default_rng(1).normal(size=(60, 16)).astype(np.float32)
LABEL = (np.arange(60) % 3 == 0).astype(np.int8)
PAIRS = [{"instruction": f"q{i % 7}", "output_a": "a b c", "output_b": "a b", "label": i % 2} for i in range(40)]


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _closed_port() -> socket.socket:
    """A socket bound to a port and never listening: connecting is refused, and no other process
    (a Ray cluster started by another test in the meantime) can take the port while it lives.
    A port found free and released at fixture setup was taken by then in one CI run."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


def _not_ray_server() -> int:
    """An HTTP server that answers 404 to everything: a wrong --address, not a Ray dashboard."""

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            self.send_error(404)

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def _tiny_bert(folder: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c"]) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(folder)
    return folder


def _copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _scorer(folder: Path) -> Path:
    from trainers.config import DPOConfig
    from trainers.dpo import build_model, save_scorer

    cfg = DPOConfig()
    model, _, _ = build_model(cfg)
    save_scorer(folder, cfg, model.state_dict(), "dpo")
    return folder


class _Payload:
    """Unpickling this runs ``touch <marker>``: what a tampered checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _crafted_state(path: Path, root: Path) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"pack_state": _Payload(root / "pwned")}, path)
    return path


def _search_folder(root: Path, name: str, edit: dict | None = None) -> Path:
    """A finished (fake) search folder: its spec and a log of 2 asks and 2 tells. With ``edit``:
    the log starts with the start record of the spec, then the spec is edited (#21)."""
    from search.engine.resume import record_start
    from search.engine.options import with_task_defaults
    from search.tasks import TASKS

    folder = root / name
    folder.mkdir(parents=True)
    opts = with_task_defaults(TASKS["pu"], SearchOptions(name=name, storage=str(root), budget=2, task="pu"))
    spec = opts.to_dict()
    log = EvaluationLog(folder)
    if edit is not None:
        record_start(log, opts)
        for key, value in edit.items():
            owner = spec["task_options"] if key in spec["task_options"] else spec
            owner[key] = value
    (folder / "search.json").write_text(json.dumps(spec))
    for i in range(2):
        log.append(event="ask", id=i, pack=0, vector=[0.0] * 22, source="optimizer")
    for i in range(2):
        log.append(event="tell", id=i, pack=0, fitness=0.0, status="ok", details={})
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    (root / "cwd").mkdir()
    d = root / "data"
    write_embeddings(d / "good" / "a.parquet", X[:30], label=LABEL[:30])
    write_embeddings(d / "good" / "b.parquet", X[30:], label=LABEL[30:])
    write_embeddings(d / "test.parquet", X, label=LABEL)
    write_embeddings(d / "mixedid" / "a.parquet", X[:30], id=np.arange(30, dtype=np.int32))
    write_embeddings(d / "mixedid" / "b.parquet", X[30:], id=np.arange(30, 60, dtype=np.int64))
    write_embeddings(d / "test8.parquet", X[:, :8], label=LABEL)
    write_embeddings(d / "nolabel_test.parquet", X, labelled=LABEL)
    write_embeddings(d / "allpos.parquet", X, labelled=LABEL, label=np.ones(60, np.int8))
    (d / "bad").mkdir()
    bad = _bad_cases(d / "bad")
    (d / "renamed.parquet").write_text("text,label\nhello,1\n")  # a CSV renamed .parquet
    losses = root / "losses"
    losses.mkdir()
    (losses / "list.json").write_text("[1, 2]")
    (losses / "null.json").write_text("null")
    (losses / "corrupt.json").write_text('{"family": "taylor", "order": ')
    (losses / "latin1.json").write_bytes('{"name": "caf\xe9"}'.encode("latin-1"))
    (losses / "noorder.json").write_text('{"family": "taylor", "selector": {"c_p": 1.0}}')
    (losses / "badterm.json").write_text('{"family": "taylor", "order": 2, "selector": {"x_q": 1.0}}')
    (losses / "wrongfamily.json").write_text('{"family": "preference-taylor", "order": 2, "coefficients": {}}')
    (losses / "highorder.json").write_text('{"family": "taylor", "order": 9}')
    (losses / "folder.json").mkdir()
    from trainers.losses.seeds import taylor_point

    pan = taylor_point("pan", 2).to_dict()
    (losses / "ok.json").write_text(json.dumps(pan))
    (losses / "strcoef.json").write_text(json.dumps({**pan, "selector": {**pan["selector"], "c_p": "1.0"}}))
    (losses / "huge.json").write_text(json.dumps({**pan, "selector": {**pan["selector"], "c_p": 1e308}}))
    (losses / "minushuge.json").write_text(json.dumps({**pan, "discriminator": {"d_p": -1e308}}))
    (losses / "noselector.json").write_text(json.dumps({**pan, "selector": {}}))
    (losses / "prefstr.json").write_text(json.dumps({"family": "preference-taylor", "order": 2,
                                                     "coefficients": {"s^1": "1.0"}}))
    pairs = root / "pairs"
    pairs.mkdir()
    _jsonl(pairs / "good.jsonl", PAIRS)
    _jsonl(pairs / "label3.jsonl", [{**PAIRS[0], "label": 3}])
    _jsonl(pairs / "nolabel.jsonl", [{k: v for k, v in PAIRS[0].items() if k != "label"}])
    _jsonl(pairs / "noprompt.jsonl", [{k: v for k, v in PAIRS[0].items() if k != "instruction"}])
    _jsonl(pairs / "blank.jsonl", [{**PAIRS[0], "output_b": "  "}])
    _jsonl(pairs / "half.jsonl", [{"prompt": "q", "chosen": "a"}])
    (pairs / "empty.jsonl").write_text("")
    (pairs / "notjson.jsonl").write_text("{nope\n")
    (pairs / "pairs.txt").write_text("hello")
    pq.write_table(pa.table({"prompt": pa.array([], pa.string()), "chosen": pa.array([], pa.string()),
                             "rejected": pa.array([], pa.string())}), pairs / "norows.parquet")
    (pairs / "renamed.parquet").write_text("prompt,chosen,rejected\nq,a,b\n")
    _jsonl(pairs / "one.jsonl", [PAIRS[0]])
    models = root / "models"
    bert = _tiny_bert(models / "bert")
    assert main(["train-pu", "--train", str(d / "good"), "--epochs", "1", "--save", str(models / "clf")]) == 0
    (models / "empty").mkdir()
    (models / "noweights").mkdir()
    (models / "noweights" / "config.json").write_text((bert / "config.json").read_text())
    torn = _copy_model(bert, models / "torn")
    weights = torn / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    nottype = _copy_model(bert, models / "notype")
    (nottype / "config.json").write_text("{}")
    scorers = root / "scorers"
    _scorer(scorers / "ok")
    for name in ("corrupt", "nofield", "torn", "badhead", "nomode"):
        _copy_model(scorers / "ok", scorers / name)
    (scorers / "corrupt" / "scorer.json").write_text("{oops")
    meta = json.loads((scorers / "ok" / "scorer.json").read_text())
    (scorers / "nofield" / "scorer.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "max_length"}))
    (scorers / "nomode" / "scorer.json").write_text(json.dumps({**meta, "mode": "sideways"}))
    torn_weights = scorers / "torn" / "model.safetensors"
    torn_weights.write_bytes(torn_weights.read_bytes()[:100])
    (scorers / "badhead" / "head.pt").write_bytes(b"not a torch file")
    texts = root / "texts"
    texts.mkdir()
    (texts / "good.csv").write_text("text\nhello there\nsecond one\n")
    (texts / "notext.csv").write_text("body\nhello\n")
    (texts / "blank.csv").write_text('text\nhello\n""\n')
    (texts / "empty.csv").write_text("text\n")
    write_embeddings(texts / "hasemb.parquet", X[:2], text=pa.array(["a", "b"]))
    (root / "out").mkdir()
    (root / "out" / "exists.json").write_text("{}")
    (root / "out" / "exists.parquet").write_bytes(b"keep me")
    (root / "out" / "full").mkdir()
    (root / "out" / "full" / "keep.txt").write_text("mine")
    (root / "out" / "afile").write_text("a regular file")
    (root / "out" / "dporun").mkdir()
    (root / "out" / "dporun" / "run.json").write_text("{}")
    results = root / "results"
    _search_folder(results, "done")
    corrupt = _search_folder(results, "torn-inside")
    lines = (corrupt / "evaluations.jsonl").read_text().splitlines()
    lines[1] = lines[1][:15]
    (corrupt / "evaluations.jsonl").write_text("\n".join(lines) + "\n")
    _search_folder(results, "badspec")
    (results / "badspec" / "search.json").write_text("{broken")
    _search_folder(results, "listspec")
    (results / "listspec" / "search.json").write_text("[]")
    # search.json edited between runs (#21): fixed fields, the budget; a log from before the start record
    for name, edit in {"edited-order": {"order": 3}, "edited-fitness": {"fitness": "pu_auc"},
                       "edited-train": {"train": [str(d / "test.parquet")]}, "edited-epochs": {"epochs": 3},
                       "shrunk-budget": {"budget": 1}, "typed-order": {"order": "x"}, "typed-budget": {"budget": "8"},
                       "typed-train": {"train": "a.parquet"}}.items():
        _search_folder(results, name, edit)
    old_log = _search_folder(results, "old-log-order")
    (old_log / "search.json").write_text((old_log / "search.json").read_text().replace('"order": 2', '"order": 3'))
    # Checkpoints are data (#21): a crafted pickle that would create ``pwned`` if it ran.
    crafted = _search_folder(results, "crafted")
    EvaluationLog(crafted).append(event="ask", id=2, pack=1, vector=[0.0] * 22, source="optimizer")  # pending: resumed
    _crafted_state(crafted / "train" / "pack-00001" / "checkpoint_000000" / "state.pt", root)
    for run in ("dpocrafted", "pucrafted"):
        (root / "out" / run).mkdir()
        (root / "out" / run / "run.json").write_text("{}")
        _crafted_state(root / "out" / run / "ray" / "run" / "checkpoint_000000" / "state.pt", root)
    _copy_model(scorers / "ok", scorers / "craftedhead")
    _crafted_state(scorers / "craftedhead" / "head.pt", root)
    return {"root": root, "bad": {k: str(v[0]) for k, v in bad.items()}, "bad_columns": {k: v[1] for k, v in bad.items()},
            "closed_socket": (closed := _closed_port()), "port_closed": closed.getsockname()[1],
            "port_404": _not_ray_server()}


# -- the corpus -----------------------------------------------------------------------------------------

PU_DATA = [  # the malformed-data cases of tests/test_data.py, by name
    "missing embedding", "missing labels", "ragged", "mixed dimensions", "nan", "inf", "no labelled positives",
    "no positives at all", "labels not 0/1", "null label", "string embedding", "no rows", "empty file", "truncated",
    "unreadable path", "folder without shards", "glob matching nothing", "shards disagree on columns",
]
D = "{W}/data/good"
R = "{W}/results"
S = ["--storage", R]


def corpus() -> list[tuple[str, list[str], list[str]]]:
    cases = []
    for name in PU_DATA:
        cases.append((f"train-pu --train {name}", ["train-pu", "--train", f"<bad:{name}>", "--epochs", "1"], [f"<bad:{name}>"]))
        cases.append((f"search --train {name}", ["search", "--name", "x", *S, "--train", f"<bad:{name}>"], [f"<bad:{name}>"]))
        cases.append((f"train-pu --test {name}", ["train-pu", "--train", D, "--test", f"<bad:{name}>", "--epochs", "1"],
                      [f"<bad:{name}>"]))
    cases += [
        ("train-pu CSV renamed .parquet", ["train-pu", "--train", "{W}/data/renamed.parquet"], ["renamed.parquet", "Parquet"]),
        ("train-pu test lacks the truth", ["train-pu", "--train", D, "--test", "{W}/data/nolabel_test.parquet"], ["nolabel_test", "'label'"]),
        ("train-pu test of another dimension", ["train-pu", "--train", D, "--test", "{W}/data/test8.parquet"], ["test8", "dimension"]),
        ("train-pu --test without --train", ["train-pu", "--test", "{W}/data/test.parquet"], ["--test needs --train"]),
        ("train-pu --epochs 0", ["train-pu", "--epochs", "0"], ["--epochs"]),
        ("train-pu --batch-size 0", ["train-pu", "--batch-size", "0"], ["--batch-size"]),
        ("train-pu --prior 1.5", ["train-pu", "--prior", "1.5"], ["--prior"]),
        ("train-pu --prior 0", ["train-pu", "--prior", "0"], ["--prior"]),
        ("train-pu --labelled-frac 0", ["train-pu", "--labelled-frac", "0"], ["--labelled-frac"]),
        ("train-pu --labelled-frac 1.5", ["train-pu", "--labelled-frac", "1.5"], ["--labelled-frac"]),
        ("train-pu --labelled-frac that draws one positive", ["train-pu", "--labelled-frac", "0.0001"],
         ["--labelled-frac 0.0001 draws 1", "at least 0.0025"]),
        ("train-pu --val-frac 1", ["train-pu", "--val-frac", "1"], ["--val-frac"]),
        # a labelled validation set (--val FILE, or --val-size N rows of benchmark data) and the labelling
        ("train-pu --val missing file", ["train-pu", "--train", D, "--val", "{W}/data/missing.parquet"], ["missing.parquet"]),
        ("train-pu --val without the truth", ["train-pu", "--train", D, "--val", "{W}/data/nolabel_test.parquet"],
         ["nolabel_test", "'label'"]),
        ("train-pu --val of another dimension", ["train-pu", "--train", D, "--val", "{W}/data/test8.parquet"],
         ["test8", "dimension"]),
        ("train-pu --val of one class", ["train-pu", "--train", D, "--val", "{W}/data/allpos.parquet"],
         ["allpos", "positives and negatives"]),
        ("train-pu --val not Parquet", ["train-pu", "--train", D, "--val", "{W}/data/renamed.parquet"], ["renamed.parquet"]),
        ("train-pu --val and --val-size", ["train-pu", "--train", D, "--val", "{W}/data/test.parquet", "--val-size", "5"],
         ["--val", "--val-size"]),
        ("train-pu --val-size -1", ["train-pu", "--val-size", "-1"], ["--val-size"]),
        ("train-pu --val-size over half the rows", ["train-pu", "--train", D, "--val-size", "31"], ["--val-size"]),
        ("train-pu --val-size x", ["train-pu", "--val-size", "x"], ["--val-size"]),
        ("train-pu --val-size without the truth", ["train-pu", "--train", "{W}/data/nolabel_test.parquet", "--val-size", "5"],
         ["--val-size", "--val FILE"]),
        ("train-pu --labelling bogus", ["train-pu", "--labelling", "bogus"], ["--labelling"]),
        ("train-pu --val-metric bogus", ["train-pu", "--val-metric", "bogus"], ["--val-metric"]),
        ("train-pu --workers with --labelling", ["train-pu", "--train", D, "--workers", "1", "--labelling", "sar-group",
                                                "--run-dir", "{W}/out/newrun"], ["--labelling", "--workers"]),
        ("search --val missing file", ["search", "--name", "x", *S, "--train", D, "--val", "{W}/data/missing.parquet"],
         ["missing.parquet"]),
        ("search --val without the truth", ["search", "--name", "x", *S, "--train", D, "--val",
                                            "{W}/data/nolabel_test.parquet"], ["nolabel_test", "'label'"]),
        ("search --val with two --train", ["search", "--name", "x", *S, "--train", D, "--train", D, "--val",
                                           "{W}/data/test.parquet"], ["--val", "--val-size"]),
        ("search --val-size over half the rows", ["search", "--name", "x", *S, "--train", D, "--val-size", "40"],
         ["--val-size"]),
        ("search --labelling bogus", ["search", "--name", "x", *S, "--labelling", "bogus"], ["--labelling"]),
        ("train-pu --lr 0", ["train-pu", "--lr", "0"], ["--lr"]),
        ("train-pu --hidden 0", ["train-pu", "--hidden", "0"], ["--hidden"]),
        ("train-pu --dropout 1", ["train-pu", "--dropout", "1"], ["--dropout"]),
        ("train-pu --fitness bogus", ["train-pu", "--fitness", "bogus"], ["--fitness"]),
        ("train-pu --epochs x", ["train-pu", "--epochs", "x"], ["--epochs"]),
        ("train-pu --device cuda", ["train-pu", "--device", "cuda", "--epochs", "1"], ["--device cuda"]),
        ("train-pu upu without a prior", ["train-pu", "--train", "{W}/data/nolabel_test.parquet", "--loss", "upu"], ["--prior"]),
        ("train-pu --loss nope", ["train-pu", "--loss", "nope"], ["unknown loss 'nope'"]),
        ("train-pu --loss zoo:nope", ["train-pu", "--loss", "zoo:nope"], ["zoo:nope", "zoo:pu-taylor-v1"]),
        ("train-pu --loss missing.json", ["train-pu", "--loss", "{W}/losses/missing.json"], ["missing.json", "no such"]),
        ("train-pu --loss a folder named .json", ["train-pu", "--loss", "{W}/losses/folder.json"], ["folder.json", "is a folder"]),
        ("train-pu --loss a JSON list", ["train-pu", "--loss", "{W}/losses/list.json"], ["list.json", "not an object"]),
        ("train-pu --loss JSON null", ["train-pu", "--loss", "{W}/losses/null.json"], ["null.json", "not an object"]),
        ("train-pu --loss corrupt JSON", ["train-pu", "--loss", "{W}/losses/corrupt.json"], ["corrupt.json", "invalid JSON"]),
        ("train-pu --loss not UTF-8", ["train-pu", "--loss", "{W}/losses/latin1.json"], ["latin1.json", "UTF-8"]),
        ("train-pu --loss without order", ["train-pu", "--loss", "{W}/losses/noorder.json"], ["noorder.json", "field 'order'"]),
        ("train-pu --loss unknown variable", ["train-pu", "--loss", "{W}/losses/badterm.json"], ["badterm.json", "x_q"]),
        ("train-pu --loss of another family", ["train-pu", "--loss", "{W}/losses/wrongfamily.json"], ["wrongfamily.json", "family"]),
        ("train-pu --loss order 9", ["train-pu", "--loss", "{W}/losses/highorder.json"], ["highorder.json", "order"]),
        ("train-pu --out is --train", ["train-pu", "--train", "{W}/data/test.parquet", "--out", "{W}/data/test.parquet"],
         ["--out", "input"]),
        ("train-pu --out inside --train", ["train-pu", "--train", D, "--out", "{W}/data/good/r.json"], ["--out", "input"]),
        ("train-pu --out exists", ["train-pu", "--out", "{W}/out/exists.json"], ["exists.json", "--overwrite"]),
        ("train-pu --out a folder", ["train-pu", "--out", "{W}/out/full"], ["full", "folder"]),
        ("train-pu --out under a file", ["train-pu", "--out", "{W}/out/afile/r.json"], ["afile", "is a file"]),
        ("train-pu --out not .json", ["train-pu", "--out", "{W}/out/r.txt"], ["r.txt", ".json"]),
        # outputs never inside inputs, and --save errors name --save (#21)
        ("train-pu --out is the --loss file", ["train-pu", "--loss", "{W}/losses/ok.json", "--out", "{W}/losses/ok.json",
                                               "--overwrite"], ["--out", "is an input"]),
        ("train-pu --save inside --train", ["train-pu", "--train", D, "--save", "{W}/data/good/model"],
         ["--save", "input"]),
        ("train-pu --save holds --train", ["train-pu", "--train", D, "--save", "{W}/data", "--overwrite"],
         ["--save", "input"]),
        ("train-pu --save is --out", ["train-pu", "--out", "{W}/out/m.json", "--save", "{W}/out/m.json"],
         ["--save", "m.json"]),
        ("train-pu --save exists", ["train-pu", "--save", "{W}/out/full"], ["--save", "full", "--overwrite"]),
        ("train-pu --save a file", ["train-pu", "--save", "{W}/out/afile"], ["--save", "afile", "is a file"]),
        ("train-pu --run-dir inside --train", ["train-pu", "--workers", "1", "--train", D, "--run-dir",
                                               "{W}/data/good/run"], ["--run-dir", "input"]),
        ("predict --id-column score", ["predict", "--model", "{W}/models/clf", "--data", D, "--out", "{W}/out/p.parquet",
                                       "--id-column", "score"], ["--id-column", "'score'"]),
        ("predict ids of two types", ["predict", "--model", "{W}/models/clf", "--data", "{W}/data/mixedid", "--out",
                                      "{W}/out/p.parquet", "--id-column", "id"], ["b.parquet", "column 'id'", "int32"]),
        ("predict --out inside --model", ["predict", "--model", "{W}/models/clf", "--data", D, "--out",
                                          "{W}/models/clf/scores.parquet"], ["--out", "input"]),
        ("predict --out the --model folder", ["predict", "--model", "{W}/models/clf", "--data", D, "--out",
                                              "{W}/models/clf", "--overwrite"], ["--out", "is an input"]),
        ("train-dpo --out inside --model", ["train-dpo", "--model", "{W}/models/bert", "--out", "{W}/models/bert/run"],
         ["--out", "input"]),
        ("embed --out inside --model", ["embed", "--in", "{W}/texts/good.csv", "--model", "{W}/models/bert",
                                        "--out", "{W}/models/bert/e"], ["--out", "input"]),
        ("search results inside --train", ["search", "--name", "x", "--storage", D, "--train", D],
         ["--storage/--name", "input"]),
        # loss files: numbers only, in range, a selector that learns (#21)
        ("train-pu --loss a string coefficient", ["train-pu", "--loss", "{W}/losses/strcoef.json"],
         ["strcoef.json", "must be a number"]),
        ("train-pu --loss a 1e308 coefficient", ["train-pu", "--loss", "{W}/losses/huge.json"], ["huge.json", "out of range"]),
        ("train-pu --loss a -1e308 coefficient", ["train-pu", "--loss", "{W}/losses/minushuge.json"],
         ["minushuge.json", "out of range"]),
        ("train-pu --loss an empty selector", ["train-pu", "--loss", "{W}/losses/noselector.json"],
         ["noselector.json", "selector"]),
        ("search --budget not a number", ["search", "--name", "x", *S, "--budget", "many"], ["--budget", "many"]),
        # search
        ("search --name ../escape", ["search", "--name", "../escape", *S], ["--name"]),
        ("search --name a/b", ["search", "--name", "a/b", *S], ["--name"]),
        ("search --name .hidden", ["search", "--name", ".hidden", *S], ["--name"]),
        ("search an existing name", ["search", "--name", "done", *S], ["done", "resume"]),
        ("search --budget 0", ["search", "--name", "x", *S, "--budget", "0"], ["--budget"]),
        ("search --pack 0", ["search", "--name", "x", *S, "--pack", "0"], ["--pack"]),
        ("search --pack many", ["search", "--name", "x", *S, "--pack", "many"], ["--pack"]),
        ("search --epochs 0", ["search", "--name", "x", *S, "--epochs", "0"], ["--epochs"]),
        ("search --concurrency 0", ["search", "--name", "x", *S, "--concurrency", "0"], ["--concurrency"]),
        ("search --workers-per-trial 0", ["search", "--name", "x", *S, "--workers-per-trial", "0"], ["--workers-per-trial"]),
        ("search --gpus-per-worker -1", ["search", "--name", "x", *S, "--gpus-per-worker", "-1"], ["--gpus-per-worker"]),
        ("search --max-failures -1", ["search", "--name", "x", *S, "--max-failures", "-1"], ["--max-failures"]),
        ("search --optimizer typo", ["search", "--name", "x", *S, "--optimizer", "TwoPointDE"], ["TwoPointDE", "did you mean"]),
        ("search --order 7", ["search", "--name", "x", *S, "--order", "7"], ["order"]),
        ("search --order 0", ["search", "--name", "x", *S, "--order", "0"], ["order"]),
        ("search --seed-losses bogus", ["search", "--name", "x", *S, "--seed-losses", "pan,bogus"], ["bogus"]),
        ("search --labelled-frac 0 (built-in data)", ["search", "--name", "x", *S, "--labelled-frac", "0"], ["--labelled-frac"]),
        ("search --fitness bogus", ["search", "--name", "x", *S, "--fitness", "bogus"], ["bogus"]),
        ("search --folds 0", ["search", "--name", "x", *S, "--folds", "0"], ["--folds"]),
        ("search --keep 0", ["search", "--name", "x", *S, "--keep", "0"], ["--keep"]),
        ("search --rungs 3,1", ["search", "--name", "x", *S, "--rungs", "3,1"], ["--rungs"]),
        ("search --controls bogus", ["search", "--name", "x", *S, "--controls", "pan,bogus"], ["--controls", "bogus"]),
        ("search --reevaluate -1", ["search", "--name", "x", *S, "--reevaluate", "-1"], ["--reevaluate"]),
        ("search --task bogus", ["search", "--name", "x", *S, "--task", "bogus"], ["--task"]),
        ("search a pu option with --task dpo", ["search", "--name", "x", *S, "--task", "dpo", "--folds", "3"],
         ["--folds", "--task pu"]),
        ("search a dpo option with --task pu", ["search", "--name", "x", *S, "--mode", "causal"], ["--mode", "--task dpo"]),
        ("search --test without --train", ["search", "--name", "x", *S, "--test", "{W}/data/test.parquet"], ["--test"]),
        ("search two --train, one --test", ["search", "--name", "x", *S, "--train", D, "--train", D, "--test",
                                            "{W}/data/test.parquet"], ["--test", "--train"]),
        ("search test of another dimension", ["search", "--name", "x", *S, "--train", D, "--test", "{W}/data/test8.parquet"],
         ["test8", "dimension"]),
        ("search pu_f1 without a prior", ["search", "--name", "x", *S, "--train", "{W}/data/nolabel_test.parquet",
                                          "--fitness", "pu_f1"], ["--prior"]),
        ("search an exact upu control without a prior", ["search", "--name", "x", *S, "--train",
                                                         "{W}/data/nolabel_test.parquet", "--controls", "pan,upu",
                                                         "--exact-controls"],
         ["--controls upu", "--prior", "--no-exact-controls"]),
        ("search --task dpo two --train", ["search", "--name", "x", *S, "--task", "dpo", "--train", "{W}/pairs/good.jsonl",
                                           "--train", "{W}/pairs/good.jsonl"], ["one --train"]),
        ("search --task dpo bad pairs", ["search", "--name", "x", *S, "--task", "dpo", "--train", "{W}/pairs/label3.jsonl"],
         ["label3.jsonl", "'label'"]),
        ("search --task dpo --controls bogus", ["search", "--name", "x", *S, "--task", "dpo", "--controls", "dpo,bogus"],
         ["--controls", "bogus"]),
        ("search --task dpo --reevaluation-seeds 0", ["search", "--name", "x", *S, "--task", "dpo", "--reevaluation-seeds", "0"],
         ["--reevaluation-seeds"]),
        ("search --task dpo re-evaluation without a control", ["search", "--name", "x", *S, "--task", "dpo", "--controls", "none"],
         ["--controls", "--reevaluate 0"]),
        ("search --task dpo --model missing", ["search", "--name", "x", *S, "--task", "dpo", "--model", "{W}/models/nowhere"],
         ["nowhere", "--model"]),
        ("resume a search that never ran", ["resume", "never", *S], ["never", "search.json"]),
        ("resume ../escape", ["resume", "../escape", *S], ["--name"]),
        ("resume a log with a corrupt interior line", ["resume", "torn-inside", *S], ["evaluations.jsonl", "line 2"]),
        ("resume a corrupt search.json", ["resume", "badspec", *S], ["search.json", "invalid JSON"]),
        ("resume a search.json that is a list", ["resume", "listspec", *S], ["search.json", "not an object"]),
        ("resume a crafted pack checkpoint", ["resume", "crafted", *S], ["state.pt", "refused", "nothing in it was run"]),
        ("train-dpo --resume a crafted checkpoint", ["train-dpo", "--out", "{W}/out/dpocrafted", "--resume"],
         ["state.pt", "refused"]),
        ("train-pu --resume a crafted checkpoint", ["train-pu", "--workers", "1", "--run-dir", "{W}/out/pucrafted",
                                                    "--resume"], ["state.pt", "refused"]),
        ("resume an edited order", ["resume", "edited-order", *S], ["search.json", "field 'order'", "started with 2"]),
        ("resume an edited fitness", ["resume", "edited-fitness", *S], ["search.json", "field 'fitness'"]),
        ("resume an edited --train", ["resume", "edited-train", *S], ["search.json", "field 'train'"]),
        ("resume edited epochs", ["resume", "edited-epochs", *S], ["search.json", "field 'epochs'"]),
        ("resume a budget below what is evaluated", ["resume", "shrunk-budget", *S],
         ["search.json", "field 'budget'", "only grow"]),
        ("resume a search.json order that is not a number", ["resume", "typed-order", *S],
         ["search.json", "field 'order'", "'x'"]),
        ("resume a search.json budget that is a string", ["resume", "typed-budget", *S], ["search.json", "field 'budget'"]),
        ("resume a search.json train that is not a list", ["resume", "typed-train", *S], ["search.json", "field 'train'"]),
        ("resume an edited order (log without a start record)", ["resume", "old-log-order", *S],
         ["search.json", "field 'order'", "22"]),
        ("report a search that never ran", ["report", "never", *S], ["never", "search.json"]),
        ("report ../escape", ["report", "../escape", *S], ["--name"]),
        # a run folder is appended to in place: a URI is refused before any work, not written to ./s3:/
        ("search --storage a URI", ["search", "--name", "x", "--storage", "s3://bucket/results"], ["--storage", "URI"]),
        ("train-dpo --out a URI", ["train-dpo", "--out", "s3://bucket/run"], ["--out", "s3://bucket/run"]),
        ("train-pu --workers --run-dir a URI", ["train-pu", "--train", D, "--workers", "1", "--run-dir", "s3://bucket/run"],
         ["--run-dir", "s3://bucket/run"]),
        # train-dpo
        ("train-dpo labels outside [0, 1]", ["train-dpo", "--train", "{W}/pairs/label3.jsonl", "--out", "{W}/out/d1"],
         ["label3.jsonl", "'label'"]),
        ("train-dpo no label column", ["train-dpo", "--train", "{W}/pairs/nolabel.jsonl", "--out", "{W}/out/d1"],
         ["nolabel.jsonl", "'label'"]),
        ("train-dpo no prompt column", ["train-dpo", "--train", "{W}/pairs/noprompt.jsonl", "--out", "{W}/out/d1"],
         ["noprompt.jsonl", "'instruction'"]),
        ("train-dpo a blank answer", ["train-dpo", "--train", "{W}/pairs/blank.jsonl", "--out", "{W}/out/d1"],
         ["blank.jsonl", "'output_b'"]),
        ("train-dpo chosen without rejected", ["train-dpo", "--train", "{W}/pairs/half.jsonl", "--out", "{W}/out/d1"],
         ["half.jsonl", "'rejected'"]),
        ("train-dpo an empty file", ["train-dpo", "--train", "{W}/pairs/empty.jsonl", "--out", "{W}/out/d1"], ["empty.jsonl"]),
        ("train-dpo not JSON lines", ["train-dpo", "--train", "{W}/pairs/notjson.jsonl", "--out", "{W}/out/d1"],
         ["notjson.jsonl", "JSON"]),
        ("train-dpo unknown file type", ["train-dpo", "--train", "{W}/pairs/pairs.txt", "--out", "{W}/out/d1"],
         ["pairs.txt", "file type"]),
        ("train-dpo no rows", ["train-dpo", "--train", "{W}/pairs/norows.parquet", "--out", "{W}/out/d1"],
         ["norows.parquet", "no rows"]),
        ("train-dpo CSV renamed .parquet", ["train-dpo", "--train", "{W}/pairs/renamed.parquet", "--out", "{W}/out/d1"],
         ["renamed.parquet"]),
        ("train-dpo too few pairs", ["train-dpo", "--train", "{W}/pairs/one.jsonl", "--out", "{W}/out/d1"], ["one.jsonl", "too few"]),
        ("train-dpo bad test pairs", ["train-dpo", "--train", "{W}/pairs/good.jsonl", "--test", "{W}/pairs/label3.jsonl",
                                      "--out", "{W}/out/d1"], ["label3.jsonl", "'label'"]),
        ("train-dpo --test without --train", ["train-dpo", "--test", "{W}/pairs/good.jsonl", "--out", "{W}/out/d1"], ["--test"]),
        ("train-dpo --model nonexistent", ["train-dpo", "--model", "{W}/models/nowhere", "--out", "{W}/out/d1"],
         ["nowhere", "--model"]),
        ("train-dpo --model an empty folder", ["train-dpo", "--model", "{W}/models/empty", "--out", "{W}/out/d1"],
         ["empty", "config.json"]),
        ("train-dpo --model without weights", ["train-dpo", "--model", "{W}/models/noweights", "--out", "{W}/out/d1"],
         ["noweights", "weights"]),
        ("train-dpo --model with torn weights", ["train-dpo", "--model", "{W}/models/torn", "--out", "{W}/out/d1"],
         ["torn"]),
        ("train-dpo --model config without a type", ["train-dpo", "--model", "{W}/models/notype", "--out", "{W}/out/d1"],
         ["notype", "model_type"]),
        ("train-dpo --loss kto", ["train-dpo", "--loss", "kto", "--out", "{W}/out/d1"], ["unknown loss 'kto'"]),
        ("train-dpo --loss a JSON list", ["train-dpo", "--loss", "{W}/losses/list.json", "--out", "{W}/out/d1"], ["list.json"]),
        ("train-dpo --loss a string coefficient", ["train-dpo", "--loss", "{W}/losses/prefstr.json", "--out", "{W}/out/d1"],
         ["prefstr.json", "must be a number"]),
        ("train-dpo --beta 0", ["train-dpo", "--beta", "0", "--out", "{W}/out/d1"], ["--beta"]),
        ("train-dpo --epochs 0", ["train-dpo", "--epochs", "0", "--out", "{W}/out/d1"], ["--epochs"]),
        ("train-dpo --lr -1", ["train-dpo", "--lr", "-1", "--out", "{W}/out/d1"], ["--lr"]),
        ("train-dpo --max-length too short", ["train-dpo", "--max-length", "10", "--out", "{W}/out/d1"], ["--max-length"]),
        ("train-dpo --val-frac 0", ["train-dpo", "--val-frac", "0", "--out", "{W}/out/d1"], ["--val-frac"]),
        ("train-dpo --robust-epsilon 0.6", ["train-dpo", "--robust-epsilon", "0.6", "--out", "{W}/out/d1"], ["--robust-epsilon"]),
        ("train-dpo --max-pairs 1", ["train-dpo", "--max-pairs", "1", "--out", "{W}/out/d1"], ["--max-pairs"]),
        ("train-dpo --mode sideways", ["train-dpo", "--mode", "sideways", "--out", "{W}/out/d1"], ["--mode"]),
        ("train-dpo --mode cross longer than the model reads", ["train-dpo", "--mode", "cross", "--model", "{W}/models/bert",
                                                               "--max-length", "600", "--out", "{W}/out/d1"],
         ["--max-length 600", "at most 512"]),
        ("train-dpo --workers 0", ["train-dpo", "--workers", "0", "--out", "{W}/out/d1"], ["--workers"]),
        ("train-dpo --gpus-per-worker 1 without CUDA", ["train-dpo", "--gpus-per-worker", "1", "--out", "{W}/out/d1"],
         ["--gpus-per-worker"]),
        ("train-dpo an existing run", ["train-dpo", "--out", "{W}/out/dporun"], ["dporun", "--resume"]),
        ("train-dpo a non-empty folder", ["train-dpo", "--out", "{W}/out/full"], ["full", "not empty"]),
        ("train-dpo --out under a file", ["train-dpo", "--out", "{W}/out/afile/run"], ["afile", "is a file"]),
        ("train-dpo --resume with no run", ["train-dpo", "--out", "{W}/out/d1", "--resume"], ["d1", "run.json"]),
        # score-pairs
        ("score-pairs --model missing", ["score-pairs", "--model", "{W}/scorers/nowhere", "--data", "{W}/pairs/good.jsonl",
                                         "--out", "{W}/out/s.parquet"], ["nowhere", "scorer"]),
        ("score-pairs --model not a scorer", ["score-pairs", "--model", "{W}/models/bert", "--data", "{W}/pairs/good.jsonl",
                                              "--out", "{W}/out/s.parquet"], ["bert", "scorer.json"]),
        ("score-pairs corrupt scorer.json", ["score-pairs", "--model", "{W}/scorers/corrupt", "--data", "{W}/pairs/good.jsonl",
                                             "--out", "{W}/out/s.parquet"], ["scorer.json", "invalid JSON"]),
        ("score-pairs scorer.json without a field", ["score-pairs", "--model", "{W}/scorers/nofield", "--data",
                                                     "{W}/pairs/good.jsonl", "--out", "{W}/out/s.parquet"],
         ["scorer.json", "field 'max_length'"]),
        ("score-pairs scorer.json with a bad mode", ["score-pairs", "--model", "{W}/scorers/nomode", "--data",
                                                     "{W}/pairs/good.jsonl", "--out", "{W}/out/s.parquet"],
         ["scorer.json", "field 'mode'"]),
        ("score-pairs truncated weights", ["score-pairs", "--model", "{W}/scorers/torn", "--data", "{W}/pairs/good.jsonl",
                                           "--out", "{W}/out/s.parquet"], ["torn"]),
        ("score-pairs a damaged head", ["score-pairs", "--model", "{W}/scorers/badhead", "--data", "{W}/pairs/good.jsonl",
                                        "--out", "{W}/out/s.parquet"], ["head.pt"]),
        ("score-pairs a crafted head", ["score-pairs", "--model", "{W}/scorers/craftedhead", "--data", "{W}/pairs/good.jsonl",
                                        "--out", "{W}/out/s.parquet"], ["head.pt", "refused"]),
        ("score-pairs --batch-size 0", ["score-pairs", "--model", "{W}/scorers/ok", "--data", "{W}/pairs/good.jsonl",
                                        "--out", "{W}/out/s.parquet", "--batch-size", "0"], ["--batch-size", "at least 1"]),
        ("score-pairs --device gpu", ["score-pairs", "--model", "{W}/scorers/ok", "--data", "{W}/pairs/good.jsonl",
                                      "--out", "{W}/out/s.parquet", "--device", "gpu"], ["--device", "'gpu'"]),
        ("train-dpo --mode pair --window past the model", ["train-dpo", "--mode", "pair", "--model", "{W}/models/bert",
                                                          "--window", "100000", "--out", "{W}/out/d1"],
         ["--window 100000", "at most"]),
        ("train-dpo --mode pair --cache-dir under a file", ["train-dpo", "--mode", "pair", "--cache-dir",
                                                            "{W}/pairs/good.jsonl/states", "--out", "{W}/out/d1"],
         ["--cache-dir", "is a file"]),
        ("train-dpo --val-frac holds out every prompt", ["train-dpo", "--train", "{W}/pairs/good.jsonl", "--val-frac",
                                                         "0.99", "--out", "{W}/out/d1"], ["good.jsonl", "--val-frac"]),
        ("score-pairs bad pairs", ["score-pairs", "--model", "{W}/scorers/ok", "--data", "{W}/pairs/half.jsonl",
                                   "--out", "{W}/out/s.parquet"], ["half.jsonl", "'rejected'"]),
        ("score-pairs missing data", ["score-pairs", "--model", "{W}/scorers/ok", "--data", "{W}/pairs/nowhere.jsonl",
                                      "--out", "{W}/out/s.parquet"], ["nowhere.jsonl"]),
        ("score-pairs --out exists", ["score-pairs", "--model", "{W}/scorers/ok", "--data", "{W}/pairs/good.jsonl",
                                      "--out", "{W}/out/exists.parquet"], ["exists.parquet", "--overwrite"]),
        ("score-pairs --out is --data", ["score-pairs", "--model", "{W}/scorers/ok", "--data", "{W}/pairs/good.jsonl",
                                         "--out", "{W}/pairs/good.jsonl"], ["--out", "input"]),
        ("score-pairs --out .txt", ["score-pairs", "--model", "{W}/scorers/ok", "--data", "{W}/pairs/good.jsonl",
                                    "--out", "{W}/out/s.txt"], ["s.txt", ".parquet"]),
        ("score-pairs --out a folder", ["score-pairs", "--model", "{W}/scorers/ok", "--data", "{W}/pairs/good.jsonl",
                                        "--out", "{W}/out/full"], ["full"]),
        # embed
        ("embed --in missing", ["embed", "--in", "{W}/texts/nowhere.csv", "--model", "{W}/models/bert", "--out", "{W}/out/e"],
         ["nowhere.csv"]),
        ("embed no text column", ["embed", "--in", "{W}/texts/notext.csv", "--model", "{W}/models/bert", "--out", "{W}/out/e"],
         ["notext.csv", "'text'"]),
        ("embed a blank text", ["embed", "--in", "{W}/texts/blank.csv", "--model", "{W}/models/bert", "--out", "{W}/out/e"],
         ["blank.csv", "'text'"]),
        ("embed no rows", ["embed", "--in", "{W}/texts/empty.csv", "--model", "{W}/models/bert", "--out", "{W}/out/e"],
         ["empty.csv"]),
        ("embed input has an embedding column", ["embed", "--in", "{W}/texts/hasemb.parquet", "--model", "{W}/models/bert",
                                                 "--out", "{W}/out/e"], ["hasemb.parquet", "'embedding'"]),
        ("embed --out a non-empty folder", ["embed", "--in", "{W}/texts/good.csv", "--model", "{W}/models/bert",
                                            "--out", "{W}/out/full"], ["full", "refusing"]),
        ("embed --out under a file", ["embed", "--in", "{W}/texts/good.csv", "--model", "{W}/models/bert",
                                      "--out", "{W}/out/afile/e"], ["afile", "is a file"]),
        ("embed --model not a model", ["embed", "--in", "{W}/texts/good.csv", "--model", "{W}/models/empty",
                                       "--out", "{W}/out/e"], ["empty", "config.json"]),
        ("embed --rows-per-shard 0", ["embed", "--in", "{W}/texts/good.csv", "--model", "{W}/models/bert",
                                      "--out", "{W}/out/e", "--rows-per-shard", "0"], ["--rows-per-shard"]),
        # cluster commands
        ("submit --budget 0", ["submit", "--address", "http://127.0.0.1:{closed}", "--name", "x", "--budget", "0"], ["--budget"]),
        ("submit --name ../x", ["submit", "--address", "http://127.0.0.1:{closed}", "--name", "../x"], ["--name"]),
        ("submit to an unreachable cluster", ["submit", "--address", "http://127.0.0.1:{closed}", "--name", "x"],
         ["127.0.0.1:{closed}", "cannot reach"]),
        ("jobs at an unreachable address", ["jobs", "--address", "http://127.0.0.1:{closed}"], ["127.0.0.1:{closed}", "cannot reach"]),
        ("jobs at a server that is not Ray", ["jobs", "--address", "http://127.0.0.1:{404}"], ["127.0.0.1:{404}", "cannot reach"]),
        ("logs at an unreachable address", ["logs", "raysubmit_x", "--address", "http://127.0.0.1:{closed}"], ["cannot reach"]),
        ("stop at an unreachable address", ["stop", "raysubmit_x", "--address", "http://127.0.0.1:{closed}"], ["cannot reach"]),
    ]
    return cases


CASES = corpus()


def _fill(text: str, world: dict) -> str:
    for name, path in world["bad"].items():
        text = text.replace(f"<bad:{name}>", path)
    return (text.replace("{W}", str(world["root"])).replace("{closed}", str(world["port_closed"]))
            .replace("{404}", str(world["port_404"])))


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def test_the_corpus_is_big_enough():
    assert len(CASES) >= 100 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case, argv, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, argv, words, world, capsys, monkeypatch):
    monkeypatch.chdir(world["root"] / "cwd")  # default outputs (dpo_run, lossforge_results) land here
    before = _snapshot(world["root"])
    try:
        code = main([_fill(a, world) for a in argv])
    except SystemExit as stop:  # argparse's own errors: one error line, exit 2
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, (case, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("lossforge: warning")]
    assert "error:" in lines[-1], err
    assert len(lines) == 1, err  # exactly one line, argparse's errors too (#21: no usage block)
    for word in words:
        assert _fill(word, world) in err, (case, word, err)
    assert _snapshot(world["root"]) == before, f"{case}: a file was created or changed"


def test_all_positive_truth_warns_in_one_line(world, capsys):
    main(["train-pu", "--train", str(world["root"] / "data" / "allpos.parquet"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert "lossforge: warning:" in err and "allpos.parquet" in err and "every row is positive" in err


def test_report_ignores_a_reevaluation_of_an_older_log(tmp_path, capsys):
    """A finished search resumed with a larger budget and stopped before its new re-evaluation: the
    old stage's winner was chosen among other elites, so `report` exports the search's best and
    says why, instead of re-exporting the stale winner."""
    folder = _search_folder(tmp_path, "grown")
    old = {"id": 7, "source": "optimizer", "vector": [1.0] * 22, "search_fitness": 0.5, "reevaluated_fitness": 0.4,
           "se": 0.1, "lcb": 0.3, "status": "ok"}
    record = {"members_per_candidate": 4, "z": 1.0, "rows": [old], "winner": 7, "shrinkage": 0.1, "log_told": 1}
    (folder / "reevaluation.json").write_text(json.dumps(record))
    assert main(["report", "grown", "--storage", str(tmp_path)]) == 0
    exported = json.loads((folder / "best_loss.json").read_text())
    assert exported["name"] == "grown-best-0"
    assert "re-evaluated the elites of 1 evaluations, the log now holds 2" in capsys.readouterr().err
    record["log_told"] = 2  # the same record, current: its winner is exported
    (folder / "reevaluation.json").write_text(json.dumps(record))
    assert main(["report", "grown", "--storage", str(tmp_path)]) == 0
    assert json.loads((folder / "best_loss.json").read_text())["name"] == "grown-best-7"


def test_a_control_that_won_the_reevaluation_is_exported_as_the_exact_loss_and_trains_as_it(tmp_path, capsys):
    """With exact controls (the default) a control that wins is exported by name, not as its
    Taylor point: train-pu --loss best_loss.json then trains that very loss."""
    folder = _search_folder(tmp_path, "kept")
    naive = {"id": -2, "source": "control:naive", "exact": "naive", "vector": [1.0] * 22, "search_fitness": None,
             "reevaluated_fitness": 0.0, "se": 0.0, "lcb": 0.0, "status": "ok"}
    loser = {**naive, "id": 1, "source": "optimizer", "search_fitness": 0.1, "reevaluated_fitness": -0.2, "lcb": -0.3}
    loser.pop("exact")
    record = {"members_per_candidate": 4, "z": 1.0, "rows": [naive, loser], "winner": -2, "shrinkage": 0.3,
              "log_told": 2}
    (folder / "reevaluation.json").write_text(json.dumps(record))
    (folder / "loss_slices.png").write_bytes(b"an earlier export's plot")
    assert main(["report", "kept", "--storage", str(tmp_path)]) == 0
    exported = json.loads((folder / "best_loss.json").read_text())
    assert exported == {"family": "exact", "format_version": 1, "loss": "naive", "name": "kept-best--2"}
    assert (folder / "best_loss.txt").read_text().startswith("naive: the exact hand-made loss")
    assert not (folder / "loss_slices.png").exists(), "no plot of a polynomial that was not exported"
    capsys.readouterr()
    assert main(["train-pu", "--smoke-test", "--loss", str(folder / "best_loss.json")]) == 0
    assert "loss naive" in capsys.readouterr().out
    exported["loss"] = "oracle"  # needs the truth: not a loss a user trains
    (folder / "best_loss.json").write_text(json.dumps(exported))
    assert main(["train-pu", "--smoke-test", "--loss", str(folder / "best_loss.json")]) == 2
    assert "best_loss.json" in capsys.readouterr().err


def test_a_search_from_before_exact_controls_resumes_with_its_taylor_controls(tmp_path):
    """search.json without ``exact_controls`` is a search whose controls were Taylor points: a
    resume must keep them, or its new margins would not compare with the logged ones."""
    from search.tasks import load_search

    old = _search_folder(tmp_path, "old")
    spec = json.loads((old / "search.json").read_text())
    assert spec["task_options"].pop("exact_controls") is None, "new searches: exact with labelled rows"
    (old / "search.json").write_text(json.dumps(spec))
    assert load_search(old)[1].task_options.controls_exact() is False
    spec["task_options"]["val_size"] = 200  # labelled rows, yet Taylor controls: the search it was
    (old / "search.json").write_text(json.dumps(spec))
    assert load_search(old)[1].task_options.controls_exact() is False


def test_a_missing_internal_file_is_our_failure_with_its_traceback_not_exit_2(tmp_path, monkeypatch):
    """Only errors raised for bad input exit 2: a FileNotFoundError from inside a command (a lost
    checkpoint, a bug) escapes main() with its traceback (exit 1 from the entry point)."""
    import search.engine.report

    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "search.json").write_text(json.dumps(SearchOptions(name="s", storage=str(tmp_path)).to_dict()))

    def lost_file(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", str(folder / "train" / "checkpoint.pt"))

    monkeypatch.setattr(search.engine.report, "write_report", lost_file)
    with pytest.raises(FileNotFoundError, match="checkpoint.pt"):
        main(["report", "s", "--storage", str(tmp_path)])


def test_a_resume_refuses_a_tampered_checkpoint_but_not_a_torn_one(tmp_path):
    """A kill while Ray copies a checkpoint in leaves a truncated state.pt that Ray never recorded:
    no danger and no reason to block every later resume. A tampered one still stops it."""
    import torch

    from trainers.checkpoints import check_checkpoints
    from trainers.errors import DataError

    good = tmp_path / "run" / "checkpoint_000000" / "state.pt"
    good.parent.mkdir(parents=True)
    torch.save({"epoch": 1, "w": torch.ones(3)}, good)
    torn = tmp_path / "run" / "checkpoint_000001" / "state.pt"
    torn.parent.mkdir(parents=True)
    torn.write_bytes(good.read_bytes()[:40])
    assert check_checkpoints(tmp_path / "run") == 2
    _crafted_state(tmp_path / "run" / "checkpoint_000002" / "state.pt", tmp_path)
    with pytest.raises(DataError, match="refused"):
        check_checkpoints(tmp_path / "run")
    assert not (tmp_path / "pwned").exists()


def test_the_crafted_checkpoint_is_a_real_payload_that_lossforge_never_runs(tmp_path):
    """The corpus's tampered checkpoints are live: unpickled the old way they run their payload;
    lossforge's loader refuses them in one line and runs nothing."""
    import torch

    from trainers.checkpoints import load_state
    from trainers.errors import DataError

    path = _crafted_state(tmp_path / "state.pt", tmp_path)
    with pytest.raises(DataError, match="refused") as refused:
        load_state(path)
    assert "\n" not in str(refused.value) and not (tmp_path / "pwned").exists()
    torch.load(path, weights_only=False)  # what loop.py, train_job.py and train_pu_job.py did before #21
    assert (tmp_path / "pwned").exists()
