"""The evaluation log: the append-only source of truth of a search.

One JSON object per line, in the order things happened in the driver:
  {"event": "ask",  "id", "pack", "vector", "source"}      a candidate was asked of the optimiser
  {"event": "tell", "id", "pack", "fitness", "status", "wall_seconds", "trial"}   its result
Each line is flushed and fsynced before anything depends on it, so after a crash the log holds
every evaluation that finished; a half-written last line is ignored. Resuming replays the log
into a fresh optimiser (same seed, same ask/tell order) instead of trusting a pickled searcher.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

LOG_NAME = "evaluations.jsonl"


@dataclass
class Evaluation:
    id: int
    pack: int
    vector: list[float]
    source: str
    fitness: float | None = None  # None while pending
    status: str = "pending"  # ok | diverged | error | pending
    wall_seconds: float | None = None
    trial: str | None = None


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

    def events(self) -> list[dict]:
        if not self.path.exists():
            return []
        events = []
        lines = self.path.read_text().splitlines()
        for i, line in enumerate(lines):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    break  # a write cut short by a crash: that event never completed
                raise ValueError(f"{self.path}: line {i + 1} is corrupt") from None
        return events

    def evaluations(self) -> list[Evaluation]:
        """Every asked candidate in ask order, with its result once told (first tell wins)."""
        by_id: dict[int, Evaluation] = {}
        for e in self.events():
            if e["event"] == "ask":
                by_id.setdefault(e["id"], Evaluation(e["id"], e["pack"], e["vector"], e.get("source", "optimizer")))
            elif e["event"] == "tell" and e["id"] in by_id and by_id[e["id"]].status == "pending":
                ev = by_id[e["id"]]
                ev.fitness, ev.status = e["fitness"], e["status"]
                ev.wall_seconds, ev.trial = e.get("wall_seconds"), e.get("trial")
        return list(by_id.values())

    def told(self) -> list[Evaluation]:
        return [e for e in self.evaluations() if e.status != "pending"]
