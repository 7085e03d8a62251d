"""Preference pairs: reading them (with one clear error per malformed input), a built-in
synthetic task, and a deterministic split by prompt.

Accepted forms (Parquet file, folder of Parquet shards, or JSONL / CSV file):
  * ``prompt``, ``chosen``, ``rejected``   - the common preference format (chosen is a, p = 1).
    Without a ``prompt`` column the prompt is empty: HH-style dialogues carry it in the texts.
  * ``instruction`` or ``prompt``, ``output_a``, ``output_b`` and ``label`` (1 if a is
    preferred, 0 if b; values in between are soft) or ``p_a`` (the judge's probability that a
    is better; taken over ``label`` when both are there).
Every pair keeps ``p`` = P(a is better) in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trainers.data.shards import DataError, list_shards, read_records
from trainers.errors import UsageError

PAIR_FORMS = "'prompt','chosen','rejected' or 'instruction'/'prompt','output_a','output_b' with 'label' or 'p_a'"
# "Length-controlled" pairs: the longer response is under 1.5x the shorter (in characters). On
# AlpacaEval "the longer answer wins" agrees 83 % overall but only ~62 % on these.
LENGTH_CONTROLLED_RATIO = 1.5


@dataclass
class PreferencePairs:
    prompt: list[str]
    a: list[str]
    b: list[str]
    p: np.ndarray  # [N] float32, P(a is better)
    source: str = "<memory>"
    files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.p)

    @property
    def soft(self) -> bool:
        """True when some label is strictly between 0 and 1 (a judge's probability)."""
        return bool(((self.p > 0) & (self.p < 1)).any())

    def take(self, index) -> "PreferencePairs":
        index = np.asarray(index, dtype=int)
        return PreferencePairs([self.prompt[i] for i in index], [self.a[i] for i in index],
                               [self.b[i] for i in index], self.p[index], self.source, self.files)

    def length_ratio(self) -> np.ndarray:
        la = np.array([len(t) for t in self.a], dtype=float)
        lb = np.array([len(t) for t in self.b], dtype=float)
        return np.maximum(la, lb) / np.maximum(np.minimum(la, lb), 1.0)

    def length_controlled(self) -> np.ndarray:
        return self.length_ratio() < LENGTH_CONTROLLED_RATIO

    def to_table(self) -> pa.Table:
        return pa.table({"prompt": self.prompt, "output_a": self.a, "output_b": self.b,
                         "p_a" if self.soft else "label": self.p if self.soft else self.p.astype(np.int8)})


def _texts(table: pa.Table, name: str, source: str) -> list[str]:
    column = table.column(name)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise DataError(source, f"must hold text, found {column.type}", name)
    blank = pc.or_kleene(pc.is_null(column), pc.equal(pc.utf8_trim_whitespace(column), ""))
    blank = blank.combine_chunks().fill_null(True).to_numpy(zero_copy_only=False)
    if blank.any():
        raise DataError(source, f"{int(blank.sum())} rows have no text (null or empty), first at row {int(np.argmax(blank))}", name)
    return column.to_pylist()


def _probabilities(table: pa.Table, name: str, source: str) -> np.ndarray:
    column = table.column(name)
    typ = column.type
    if not (pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ)):
        raise DataError(source, f"must be numbers in [0, 1], found {typ}", name)
    if column.null_count:
        raise DataError(source, f"{column.null_count} rows are null; every pair needs a label", name)
    values = column.to_numpy().astype(np.float64)
    bad = ~np.isfinite(values) | (values < 0) | (values > 1)
    if bad.any():
        raise DataError(source, f"labels must be in [0, 1], found {np.unique(values[bad])[:5].tolist()} "
                                f"(first at row {int(np.argmax(bad))})", name)
    return values.astype(np.float32)


def pairs_from_table(table: pa.Table, source: str, need_labels: bool = True) -> PreferencePairs:
    """``need_labels=False`` (scoring): output_a/output_b pairs without a label get p = NaN."""
    names = set(table.column_names)
    if table.num_rows == 0:
        raise DataError(source, "the file has no rows")
    if {"chosen", "rejected"} <= names:
        prompt = _texts(table, "prompt", source) if "prompt" in names else [""] * table.num_rows
        a, b = _texts(table, "chosen", source), _texts(table, "rejected", source)
        p = np.ones(table.num_rows, dtype=np.float32)
    elif {"output_a", "output_b"} <= names:
        prompt_column = "instruction" if "instruction" in names else "prompt" if "prompt" in names else None
        if prompt_column is None:
            raise DataError(source, f"missing column: pairs with output_a/output_b need 'instruction' or 'prompt'; "
                                    f"found {sorted(names)}", "instruction")
        label_column = "p_a" if "p_a" in names else "label" if "label" in names else None
        if label_column is None and need_labels:
            raise DataError(source, f"missing column: need 'label' (1 if output_a is preferred) or 'p_a'; "
                                    f"found {sorted(names)}", "label")
        prompt = _texts(table, prompt_column, source)
        a, b = _texts(table, "output_a", source), _texts(table, "output_b", source)
        p = _probabilities(table, label_column, source) if label_column else np.full(table.num_rows, np.nan, np.float32)
    else:
        missing = sorted({"chosen", "rejected"} - names) if names & {"chosen", "rejected"} else \
            sorted({"output_a", "output_b"} - names) if names & {"output_a", "output_b"} else None
        column = missing[0] if missing else None
        raise DataError(source, f"not preference pairs: need {PAIR_FORMS}; found {sorted(names)}", column)
    return PreferencePairs(prompt, a, b, p, source)


def read_pairs(path: str | Path, need_labels: bool = True) -> PreferencePairs:
    """Read pairs from a Parquet file / folder of shards / glob, or one JSONL or CSV file."""
    text = str(path)
    suffix = Path(text).suffix.lower()
    if suffix in (".jsonl", ".json", ".csv"):
        files = [Path(text)]
    else:
        files = list_shards(text)
    parts = []
    for f in files:
        table = read_records(f, text_columns=("prompt", "instruction", "chosen", "rejected", "output_a", "output_b"))
        parts.append(pairs_from_table(table, str(f), need_labels))
    first = parts[0]
    return PreferencePairs(
        prompt=[t for part in parts for t in part.prompt],
        a=[t for part in parts for t in part.a],
        b=[t for part in parts for t in part.b],
        p=np.concatenate([part.p for part in parts]),
        source=text if len(parts) > 1 else first.source,
        files=[str(f) for f in files],
    )


def split_by_prompt(pairs: PreferencePairs, val_frac: float, seed: int) -> tuple[PreferencePairs, PreferencePairs]:
    """A deterministic (train, validation) split that keeps every prompt on one side, so the
    validation agreement measures judging new prompts, not new answers to seen ones."""
    if not 0.0 < val_frac < 1.0:
        raise UsageError(f"--val-frac must be in (0, 1), got {val_frac}")
    prompts = sorted(set(pairs.prompt))
    if len(prompts) < 2:
        # One prompt (or none, e.g. HH-style data): split pairs instead.
        order = np.random.default_rng(seed).permutation(len(pairs))
        n_val = max(1, int(round(val_frac * len(pairs))))
        if n_val >= len(pairs):
            raise DataError(pairs.source, f"{len(pairs)} pair(s) are too few to hold out a validation split")
        return pairs.take(np.sort(order[n_val:])), pairs.take(np.sort(order[:n_val]))
    rng = np.random.default_rng(seed)
    shuffled = [prompts[i] for i in rng.permutation(len(prompts))]
    n_val = max(1, int(round(val_frac * len(prompts))))
    if n_val >= len(prompts):
        raise DataError(pairs.source, f"--val-frac {val_frac} of {len(prompts)} prompts holds out every prompt: "
                                      "lower --val-frac or give more prompts")
    held = set(shuffled[:n_val])
    is_val = np.array([t in held for t in pairs.prompt])
    return pairs.take(np.flatnonzero(~is_val)), pairs.take(np.flatnonzero(is_val))


# -- the built-in synthetic task ---------------------------------------------------------------

TOPICS = {
    "fruit": "apple pear plum cherry mango lemon peach grape".split(),
    "animal": "horse tiger otter eagle zebra camel whale mouse".split(),
    "colour": "red blue green yellow purple orange violet black".split(),
    "tool": "hammer wrench saw drill chisel spanner pliers file".split(),
}
FILLER = "the a some and very also maybe really quite just so then".split()
TEMPLATES = ["list some", "name a few", "what are good examples of", "tell me about", "give me three"]
PURPOSES = ["for my class", "for a quiz", "please", "quickly", "for a story", "for my notes"]


def synthetic_vocabulary() -> list[str]:
    """Every word the synthetic task uses: the built-in tiny model's vocabulary."""
    words = set(FILLER) | {w for ws in TOPICS.values() for w in ws} | set(TOPICS)
    words |= {w for t in TEMPLATES + PURPOSES for w in t.split()}
    return sorted(words)


def synthetic_pairs(n: int = 3000, seed: int = 0) -> PreferencePairs:
    """A preference task with a learnable rule that is not length: the judge prefers the answer
    with more words on the prompt's topic. Both answers draw their lengths independently, and
    ``p`` is a soft judge probability sigmoid(1.5 * (on-topic words in a - in b))."""
    rng = np.random.default_rng(seed)
    topics = sorted(TOPICS)
    prompts, a_texts, b_texts, ps = [], [], [], []
    while len(ps) < n:
        topic = topics[rng.integers(len(topics))]
        prompt = f"{TEMPLATES[rng.integers(len(TEMPLATES))]} {topic} {PURPOSES[rng.integers(len(PURPOSES))]}"
        answers, hits = [], []
        for _ in range(2):
            length = int(rng.integers(5, 11))
            on_topic = int(rng.integers(0, length + 1))
            others = [w for t in topics if t != topic for w in TOPICS[t]] + FILLER
            words = list(rng.choice(TOPICS[topic], on_topic)) + list(rng.choice(others, length - on_topic))
            rng.shuffle(words)
            answers.append(" ".join(words))
            hits.append(on_topic)
        if hits[0] == hits[1]:
            continue  # the judge has no preference: not a training signal
        prompts.append(prompt)
        a_texts.append(answers[0])
        b_texts.append(answers[1])
        ps.append(1.0 / (1.0 + np.exp(-1.5 * (hits[0] - hits[1]))))
    return PreferencePairs(prompts, a_texts, b_texts, np.array(ps, dtype=np.float32), source=f"<synthetic pairs, seed {seed}>")
