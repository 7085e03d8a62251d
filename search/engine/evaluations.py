"""The evaluation log: the append-only source of truth of a search.

One JSON object per line, in the order things happened in the driver:
  {"event": "ask",  "id", "pack", "vector", "source"}      a candidate was asked of the optimiser
  {"event": "tell", "id", "pack", "fitness", "status", "details", "wall_seconds", "trial"}   its result
Each line is flushed and fsynced before anything depends on it, so after a crash the log holds
every evaluation that finished. A crash *inside* a write leaves a torn last line: readers ignore
it, and :meth:`EvaluationLog.repair` (run before a resumed search appends anything) cuts it off
atomically, keeping a copy of the torn file, so no new line is ever glued onto it. Resuming
replays the log into a fresh optimiser (same seed, same ask/tell order) instead of trusting a
pickled searcher.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from trainers.errors import DataError
from trainers.files import complete_lines, write_text_atomic

LOG_NAME = "evaluations.jsonl"
SEED_SOURCE = "seed:"  # an ask's "source" for a seed loss: "seed:pan", "seed:zoo:NAME"


@dataclass
class Evaluation:
    id: int
    pack: int
    vector: list[float]
    source: str
    fitness: float | None = None  # None while pending
    status: str = "pending"  # ok | diverged | rejected | error | pending
    wall_seconds: float | None = None
    trial: str | None = None
    details: dict | None = None  # what the task reported beyond the fitness (PU: rung, margins)


class EvaluationLog:
    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOG_NAME

    def append(self, **event) -> None:
        event.setdefault("time", time.time())
        line = json.dumps(event, default=float) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def _complete_lines(self) -> tuple[list[str], bytes]:
        """(the complete lines, the torn tail after the last newline: empty if none)."""
        return complete_lines(self.path)

    def events(self) -> list[dict]:
        lines, _ = self._complete_lines()  # a torn tail is an event that never completed
        events = []
        for i, line in enumerate(lines):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                raise DataError(self.path, f"line {i + 1} is corrupt (not the last line, so not a torn write): "
                                           "the log was edited or damaged; restore it from a copy") from None
        return events

    def repair(self) -> int:
        """Cut a torn last line off (atomically), keeping the torn file as ``<log>.torn-N``.
        Returns the bytes removed (0 when the log ends cleanly)."""
        lines, tail = self._complete_lines()
        if not tail:
            return 0
        n = 1 + sum(1 for _ in self.path.parent.glob(self.path.name + ".torn-*"))
        shutil.copy2(self.path, self.path.with_name(f"{self.path.name}.torn-{n}"))
        write_text_atomic(self.path, "".join(line + "\n" for line in lines))
        return len(tail)

    def evaluations(self) -> list[Evaluation]:
        """Every asked candidate in ask order, with its result once told (first tell wins)."""
        by_id: dict[int, Evaluation] = {}
        for e in self.events():
            if e["event"] == "ask":
                by_id.setdefault(e["id"], Evaluation(e["id"], e["pack"], e["vector"], e.get("source", "optimizer")))
            elif e["event"] == "tell" and e["id"] in by_id and by_id[e["id"]].status == "pending":
                ev = by_id[e["id"]]
                ev.fitness, ev.status = e["fitness"], e["status"]
                ev.wall_seconds, ev.trial, ev.details = e.get("wall_seconds"), e.get("trial"), e.get("details")
        return list(by_id.values())

    def duplicate_tells(self) -> list[int]:
        """Ids told more than once (two writers at once; readers keep the first tell)."""
        seen: set[int] = set()
        twice = {e["id"] for e in self.events() if e["event"] == "tell" and (e["id"] in seen or seen.add(e["id"]))}
        return sorted(twice)

    def told(self) -> list[Evaluation]:
        return [e for e in self.evaluations() if e.status != "pending"]
