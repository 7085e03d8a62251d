"""A PU search pack: many candidate losses trained together, scored so that noise cannot win.

One pack trains K candidate Taylor losses plus the *controls* (hand-made losses, e.g. PAN and
naive, trained exactly where a control names its ``"exact"`` loss, else as their Taylor points)
on every data set of the plan. Each candidate and control is trained on F
folds (labelled/validation partitions drawn afresh for every pack) x S seeds, all members of one
stacked population per data set, and control and candidate share each (fold, seed): the same
split, initial weights and batches (common random numbers). A candidate's score on a data set is
its *paired margin*: the mean over (fold, seed) of its validation fitness minus the best
control's on the same (fold, seed), so split and seed noise cancel. Across several data sets the
margins are put in noise units (divided by the spread of the paired differences on that data
set) and averaged, so no data set dominates and a loss broken on one of them loses.

Successive halving: the plan's ``rungs`` are epoch counts; after each rung but the last only the
best ``keep`` share of the candidates trains on (the population is compacted, optimiser state
and all), so most of the budget goes to promising losses. A candidate's result is its margin at
the last rung it reached, shifted to the full epochs (:func:`to_full_fidelity`). Candidates whose selector polynomial cannot rank at all (see
:func:`selector_can_rank`) are rejected before training.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Callable

import numpy as np
import torch

from trainers.boundary import DIVERGED_FITNESS, CandidateResult
from trainers.config import PUConfig
from trainers.data.pu import PUData, split_entropy
from trainers.data.shards import read_table
from trainers.data.synthetic import synthetic_pu_problem
from trainers.losses.taylor import exponents
from trainers.pu import Objective, Population, TrainTensors, ValidationSets, build_population, run_epochs

SEARCH_STREAM, REEVALUATION_STREAM = 1, 2  # fold families: the search never sees re-evaluation folds


@dataclass
class PUPackPlan:
    """How every pack of a PU search trains and scores its candidates (crosses the Ray boundary)."""

    datasets: list[str | None]  # training data sources; None: the built-in problem
    labelled_frac: float
    seed: int  # the search's seed: PU labelling, folds, member seeds
    pu: PUConfig  # epochs = the last rung; fitness = each member's validation metric
    priors: list[float | None] = field(default_factory=list)  # per data set, where known: a fitness or exact control needing one
    folds: int = 2
    seeds_per_candidate: int = 1
    controls: list[dict] = field(default_factory=list)  # [{"name", "order", "coefficients", "center", "exact"?}]
    rungs: list[int] = field(default_factory=lambda: [10])  # epochs; the last is cfg.epochs
    keep: float = 1 / 3  # share of candidates that train on after each rung but the last
    stream: int = SEARCH_STREAM

    @property
    def members_per_unit(self) -> int:
        return self.folds * self.seeds_per_candidate

    # A search fitness is in the re-evaluation's units: both paired margins over the controls
    # trained beside it (or both raw without controls).
    search_fitness_paired = True

    def for_reevaluation(self, task_options, epochs: int) -> "PUPackPlan":
        """Fresh folds and seeds (a stream the search never drew from), every elite trained every
        epoch (keep 1); the rungs only set how often the stage checkpoints and reports."""
        step = max(1, epochs // 5)
        return replace(self, folds=task_options.reevaluation_folds, seeds_per_candidate=task_options.reevaluation_seeds,
                       keep=1.0, rungs=list(range(step, epochs, step)) + [epochs], stream=REEVALUATION_STREAM)

    def member_seeds(self) -> list[tuple[int, int]]:
        """(fold, seed) of each member of one candidate, in member order."""
        base = self.seed + 100_000 * self.stream
        return [(f, base + 1000 * f + s) for f in range(self.folds) for s in range(self.seeds_per_candidate)]


def load_dataset(source: str | None, cfg: PUConfig) -> PUData:
    """Read (or generate) and label a training set once per process; actor reuse keeps it warm.
    Only training data (and the labelled validation set, if any) is read: the test split never
    reaches a search worker."""
    return _load_dataset(source, cfg.labelled_frac, cfg.seed, cfg.labelling, cfg.val_size, cfg.val)


@lru_cache(maxsize=8)
def _load_dataset(source: str | None, labelled_frac: float, seed: int, labelling: str, val_size: int,
                  val: str | None) -> PUData:
    table = synthetic_pu_problem()[0] if source is None else read_table(source)
    val_table = read_table(val, need="label") if val else None
    return PUData.from_table(table, labelled_frac, seed, labelling, val_size, val_table)


def selector_can_rank(candidate: dict) -> bool:
    """Whether the selector's polynomial can separate positives from unlabelled points at all.

    C learns only from its own terms: it needs a term in c_p and one in c_u (to push the two
    sides apart), or a c_u term coupled with d_u (to follow the discriminator's opinion of each
    unlabelled point, as PAN does). Without either, every unlabelled point gets the same push
    and the ranking is noise. NaN coefficients pass: they must train and be told as diverged."""
    w = np.asarray(candidate["coefficients"], dtype=float)
    n_d = len(exponents(candidate["order"], "discriminator"))
    selector = w[n_d:]
    if not np.isfinite(selector).all():
        return True
    tol = 1e-6 * max(float(np.abs(selector).max()), 1e-12)
    used = [e for e, wi in zip(exponents(candidate["order"], "selector"), selector) if abs(wi) > tol]
    has_cp = any(e[2] > 0 for e in used)
    has_cu = any(e[3] > 0 for e in used)
    return (has_cp and has_cu) or any(e[3] > 0 and e[1] > 0 for e in used)


# -- scoring one rung ----------------------------------------------------------------------------


def member_values(pop: Population, evaluations, cfg: PUConfig, units: int, m: int) -> np.ndarray:
    """[units, m] validation fitness of every member (its best epoch with epoch selection, else
    the last); NaN where a member diverged."""
    last = np.array([e.fitness for e in evaluations], dtype=float)
    values = np.array(pop.best_fitness, dtype=float) if cfg.select_epoch else last
    values[~pop.alive.cpu().numpy() | ~np.isfinite(values)] = np.nan
    return values.reshape(units, m)


@dataclass
class RungScores:
    """Per data set and candidate: paired margin, spread of the paired differences, raw mean."""

    margin: np.ndarray  # [datasets, candidates]
    sd: np.ndarray
    metric: np.ndarray
    control: np.ndarray  # [datasets]: the best control's mean fitness


def paired_scores(values: list[np.ndarray], n_controls: int) -> RungScores:
    """Margins over the best control (by mean), paired member by member; without controls the
    margin is the plain mean fitness. A candidate with a diverged member gets NaN."""
    margins, sds, metrics, controls = [], [], [], []
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: diverged candidates
        for v in values:
            candidates = v[n_controls:]
            metrics.append(np.nanmean(candidates, axis=1))
            if n_controls:
                control_means = np.nanmean(v[:n_controls], axis=1)
                best = v[int(np.nanargmax(control_means))]
                # A control member that diverged (rare) is replaced by that control's mean, so
                # it cannot take every candidate down with it.
                best = np.where(np.isnan(best), np.nanmax(control_means), best)
                diff = candidates - best[None, :]
                controls.append(float(np.nanmax(control_means)))
            else:
                diff = candidates
                controls.append(float("nan"))
            margins.append(diff.mean(axis=1))
            sds.append(diff.std(axis=1, ddof=1) if diff.shape[1] > 1 else np.full(len(diff), np.nan))
    return RungScores(np.array(margins), np.array(sds), np.array(metrics, dtype=float), np.array(controls))


def noise_scales(scores: RungScores, n_datasets: int) -> list[float]:
    """Each data set's noise unit: the median spread of the paired differences across members
    (robust to a few wild candidates). One data set needs no unit (1.0: raw margins)."""
    if n_datasets == 1:
        return [1.0]
    out = []
    for sd in scores.sd:
        finite = sd[np.isfinite(sd) & (sd > 0)]
        out.append(float(np.median(finite)) if len(finite) else 1.0)
    return out


def rung_results(ids: list[int], scores: RungScores, scales: list[float], rung: int, epochs: int) -> list[CandidateResult]:
    out = []
    for j, cid in enumerate(ids):
        margins = scores.margin[:, j]
        ok = bool(np.isfinite(margins).all())
        fitness = float(np.mean(margins / np.asarray(scales))) if ok else DIVERGED_FITNESS
        details = {"rung": rung, "epochs": epochs, "margin": margins.tolist(), "sd": scores.sd[:, j].tolist(),
                   "metric": scores.metric[:, j].tolist(), "control": scores.control.tolist(), "scale": list(scales)}
        out.append(CandidateResult(cid, fitness, "ok" if ok else "diverged", details))
    return out


def survivors(results: list[CandidateResult], keep: float) -> list[int]:
    """Ids of the best ``keep`` share of the candidates that are still ok (at least one)."""
    ok = sorted((r for r in results if r.status == "ok"), key=lambda r: -r.fitness)
    return [r.id for r in ok[: max(1, math.ceil(keep * len(ok)))]] if ok else []


# -- the pack -------------------------------------------------------------------------------------


@dataclass
class PackState:
    """A pack's checkpoint: the next rung, the candidates still training, every result so far,
    the noise units, and each data set's population."""

    rung: int
    alive: list[int]
    results: dict[int, CandidateResult]
    scales: list[float] | None = None
    populations: list[dict] | None = None

    @property
    def finished(self) -> bool:
        return not self.alive

    def to_dict(self) -> dict:
        """Tensors and plain values only: checkpoints are read with ``weights_only=True``."""
        return {"rung": self.rung, "alive": list(self.alive), "results": {i: r.to_dict() for i, r in self.results.items()},
                "scales": self.scales, "populations": self.populations}

    @classmethod
    def from_dict(cls, d: dict) -> "PackState":
        return cls(int(d["rung"]), list(d["alive"]), {int(i): CandidateResult.from_dict(r) for i, r in d["results"].items()},
                   d.get("scales"), d.get("populations"))


RungHook = Callable[[PackState, int], None]  # (state after the rung, rungs in all)


def _populations(plan: PUPackPlan, cfg: PUConfig, units: list[dict], datasets: list[PUData], stream: int):
    members = plan.member_seeds()
    objective_rows = [u for u in units for _ in members]
    pops = []
    for data, prior in zip(datasets, plan.priors or [None] * len(datasets)):
        objective = Objective.taylor_candidates(objective_rows, cfg.device, prior)
        pops.append(build_population(objective, [s for _ in units for _, s in members], data.dim, cfg, stream=stream,
                                     member_fold=[f for _ in units for f, _ in members]))
    return pops


def run_pack(
    plan: PUPackPlan,
    pack: int,
    candidates: list[dict],
    device: str | torch.device = "cpu",
    shard: tuple[int, int] = (0, 1),
    sync=None,
    state: PackState | None = None,
    on_rung: RungHook | None = None,
) -> PackState:
    """Train and score ``candidates`` (``{"id", "order", "coefficients", "center"}``) through
    every rung; resume from ``state`` (a checkpoint of this pack) if given."""
    cfg = replace(plan.pu, device=str(device))
    datasets = [load_dataset(s, replace(cfg, seed=plan.seed, labelled_frac=plan.labelled_frac)) for s in plan.datasets]
    folds = [[d.fold(cfg.val_frac, split_entropy(plan.seed, plan.stream, pack, f)) for f in range(plan.folds)] for d in datasets]
    by_id = {c["id"]: c for c in candidates}
    if state is None:
        state = PackState(rung=0, alive=[], results={})
        for c in candidates:
            if c.get("exact") or selector_can_rank(c):  # an exact control is not its Taylor point
                state.alive.append(c["id"])
            else:
                state.results[c["id"]] = CandidateResult(c["id"], DIVERGED_FITNESS, "rejected", {"rung": -1, "epochs": 0})
    units = plan.controls + [by_id[i] for i in state.alive]
    pops = _populations(plan, cfg, units, datasets, stream=shard[0]) if state.alive else []
    for pop, saved in zip(pops, state.populations or []):
        pop.load_state_dict(saved)
    tensors = [TrainTensors.from_folds(d, f, "taylor", cfg.device, shard) for d, f in zip(datasets, folds)]
    validation = [ValidationSets.from_folds(d, f) for d, f in zip(datasets, folds)]
    while state.alive and state.rung < len(plan.rungs):
        epochs = plan.rungs[state.rung]
        evaluations = [run_epochs(pop, data, val, cfg, epochs, prior, sync=sync)
                       for pop, data, val, prior in zip(pops, tensors, validation, plan.priors or [None] * len(pops))]
        _score_rung(plan, cfg, state, pops, evaluations, epochs)
        state.populations = [p.state_dict() for p in pops] if state.alive else None
        if on_rung is not None:
            on_rung(state, len(plan.rungs))
    return state


def _score_rung(plan: PUPackPlan, cfg: PUConfig, state: PackState, pops: list[Population], evaluations, epochs: int) -> None:
    """Score the rung just trained, record every candidate's result, and keep the best share."""
    n_controls, m = len(plan.controls), plan.members_per_unit
    values = [member_values(p, e, cfg, n_controls + len(state.alive), m) for p, e in zip(pops, evaluations)]
    scores = paired_scores(values, n_controls)
    if state.scales is None:
        state.scales = noise_scales(scores, len(pops))
    results = rung_results(state.alive, scores, state.scales, state.rung, epochs)
    for r in results:  # each candidate's fitness at every rung it reached
        before = state.results.get(r.id)
        r.details["history"] = (before.details.get("history", []) if before else []) + [r.fitness]
    state.results.update({r.id: r for r in results})
    last = state.rung == len(plan.rungs) - 1
    keep = [] if last else survivors(results, plan.keep)
    rows = list(range(n_controls)) + [n_controls + state.alive.index(i) for i in keep]
    member_rows = [u * m + j for u in rows for j in range(m)]
    if keep:
        for pop in pops:
            pop.select(member_rows)
    state.alive = keep
    state.rung += 1
    if not keep:
        to_full_fidelity(state.results)


def to_full_fidelity(results: dict[int, CandidateResult]) -> None:
    """Make fitness comparable across rungs before it is told.

    Margins move with the epochs (at 1 epoch every loss is half-trained, and the controls gain
    more from longer training than most candidates do), so a candidate dropped at rung r cannot
    be told its rung-r margin beside the full-epoch margins of those that trained on: it would
    look better than some of them. Each rung's shift is the median change of the margin, rung r
    to r+1, of the candidates that trained through both; a dropped candidate is told its last
    margin plus the shifts it did not train through (``details``: ``raw_fitness``, ``shift``)."""
    histories = [r.details["history"] for r in results.values() if r.status == "ok" and "history" in r.details]
    depth = max((len(h) for h in histories), default=0)
    shifts = []
    for j in range(depth - 1):
        steps = [h[j + 1] - h[j] for h in histories if len(h) > j + 1]
        shifts.append(float(np.median(steps)) if steps else 0.0)
    for r in results.values():
        if r.status == "ok" and "history" in r.details:
            reached = len(r.details["history"])
            shift = float(sum(shifts[reached - 1:]))
            r.details.update(raw_fitness=r.fitness, shift=shift)
            r.fitness = r.fitness + shift
