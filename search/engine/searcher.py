"""How to search: a Tune searcher around a Nevergrad optimiser that asks a *pack* per trial.

Ray's ``NevergradSearch`` asks one point per trial, drops errored trials without telling the
optimiser, and can KeyError on restore (ray #18863). This searcher asks K points per trial, tells
every one of them back (diverged, rejected or errored candidates as a penalty), and writes each
ask and tell to the evaluation log first. On resume it replays that log into a fresh optimiser
with the same seed, then re-dispatches packs that were asked but never told -- with the same
candidate ids and pack numbers, so their Train runs pick up from their last checkpoint.

Tune's trial config is ``{"pack": int, "candidates": [{"id", "vector"}]}``; what comes back is a
:class:`trainers.boundary.PackReport`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from ray.tune.search import Searcher

from search.engine.evaluations import SEED_SOURCE, EvaluationLog
from search.engine.space import LossSpace, make_nevergrad_optimizer
from trainers.boundary import DIVERGED_FITNESS, PackReport, same_point


class PackSearcher(Searcher):
    def __init__(
        self,
        space: LossSpace,
        optimizer: str,
        budget: int,
        pack: int,
        num_workers: int,
        seed: int,
        log: EvaluationLog,
        seed_vectors: list[tuple[str, np.ndarray]] = (),
        progress: Callable[[str], None] = print,
    ):
        super().__init__(metric="best_fitness", mode="max")
        self.space, self.budget, self.pack, self.log = space, budget, pack, log
        self.progress = progress
        self.optimizer = make_nevergrad_optimizer(optimizer, space, budget, num_workers, seed)
        self._candidates: dict[int, object] = {}  # id -> nevergrad candidate (for tell)
        self._running: dict[str, int] = {}  # trial id -> pack number
        self._pack_members: dict[int, list[int]] = {}
        self._seeds = list(seed_vectors)
        self._replay()

    # -- state ------------------------------------------------------------------------------
    def _replay(self) -> None:
        """Rebuild the optimiser from the log: the same asks and tells in the same order."""
        seeds = list(self._seeds)
        told: set[int] = set()
        for event in self.log.events():
            if event["event"] == "ask":
                if event["id"] in self._candidates:
                    continue
                if seeds and event.get("source", "").startswith(SEED_SOURCE):
                    self.optimizer.suggest(np.asarray(seeds.pop(0)[1]))
                candidate = self.optimizer.ask()
                if not same_point(candidate.value, event["vector"]):
                    # The optimiser did not retrace its steps (another Nevergrad version, say):
                    # fall back to telling the logged point as one it never asked.
                    candidate = self.optimizer.parametrization.spawn_child(new_value=np.asarray(event["vector"]))
                self._candidates[event["id"]] = candidate
                self._pack_members.setdefault(event["pack"], []).append(event["id"])
            elif event["event"] == "tell" and event["id"] not in told and event["id"] in self._candidates:
                told.add(event["id"])
                self.optimizer.tell(self._candidates[event["id"]], -float(event["fitness"]))
        self._seeds = seeds
        self._told = told
        self._pending_packs = sorted(p for p, ids in self._pack_members.items() if any(i not in told for i in ids))

    @property
    def asked(self) -> int:
        return len(self._candidates)

    @property
    def told(self) -> int:
        return len(self._told)

    @property
    def pending_packs(self) -> list[int]:
        return list(self._pending_packs)

    def packs_to_run(self) -> int:
        """Trials this run will start: pending packs, then new packs up to the budget."""
        remaining = self.budget - self.asked
        return len(self._pending_packs) + -(-remaining // self.pack)

    # -- Tune's searcher interface ------------------------------------------------------------
    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the evaluation log is this searcher's state (replayed on resume)."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore: see :meth:`save`."""

    def suggest(self, trial_id: str):
        if self._pending_packs:
            pack = self._pending_packs.pop(0)
        elif self.asked < self.budget:
            pack = max(self._pack_members, default=-1) + 1
            self._pack_members[pack] = [self._ask(pack) for _ in range(min(self.pack, self.budget - self.asked))]
        else:
            return Searcher.FINISHED
        self._running[trial_id] = pack
        members = [i for i in self._pack_members[pack] if i not in self._told]
        self.progress(f"pack {pack}: {len(members)} candidate(s) dispatched ({self.told}/{self.budget} evaluated)")
        return {
            "pack": pack,
            "candidates": [{"id": i, "vector": np.asarray(self._candidates[i].value).tolist()} for i in members],
        }

    def _ask(self, pack: int) -> int:
        source = "optimizer"
        if self._seeds:
            name, vector = self._seeds.pop(0)
            self.optimizer.suggest(vector)
            source = f"{SEED_SOURCE}{name}"
        candidate = self.optimizer.ask()
        cid = self.asked
        self._candidates[cid] = candidate
        self.log.append(event="ask", id=cid, pack=pack, vector=np.asarray(candidate.value).tolist(), source=source)
        return cid

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pack = self._running.pop(trial_id, None)
        if pack is None:
            return  # a trial this searcher never suggested (e.g. replayed by Tune itself)
        report = None if error else PackReport.from_dict(result)
        finished = report is not None and report.finished
        by_id = {r.id: r for r in report.results} if finished else {}
        for cid in [i for i in self._pack_members[pack] if i not in self._told]:
            r = by_id.get(cid)
            fitness, status, details = (r.fitness, r.status, r.details) if r else (DIVERGED_FITNESS, "error", {})
            if not np.isfinite(fitness):
                fitness, status = DIVERGED_FITNESS, "diverged"
            self.log.append(event="tell", id=cid, pack=pack, fitness=fitness, status=status, details=details,
                            wall_seconds=report.worker_seconds if report else None,
                            train_seconds=report.train_seconds if report else None, trial=trial_id,
                            device=report.device if report else None)
            self.optimizer.tell(self._candidates[cid], -float(fitness))
            self._told.add(cid)
        best = max((e.fitness for e in self.log.told() if e.status == "ok"), default=float("nan"))
        self.progress(
            f"pack {pack} {'done' if finished else 'FAILED'}: {self.told}/{self.budget} evaluated, "
            f"best fitness {best:.4f}, {len(self._running)} trial(s) running"
        )
