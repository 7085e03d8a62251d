"""Serving a trained preference scorer: P(a better than b | prompt) for batches of pairs.

    scorer = PreferenceScorer.load("runs/dpo/scorer")
    scorer.prob_a_better(prompts, outputs_a, outputs_b)   # numpy [N]
    scorer.rank(prompt, candidates)                       # best first; n scorings, not n^2 pairs

Each response gets one scalar *reward*: ``scale * (value - reference value)``, with value the
encoder's score or the causal model's log pi(y|x). Then P(a better) = sigmoid(reward_a -
reward_b). In encoder mode the reference scores are 0 by construction (zero-initialised head),
so serving runs one model; in causal mode the frozen reference is saved next to the policy and
runs too (two forward passes per response).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from trainers.data.pairs import PreferencePairs
from trainers.models.preference import (
    REFERENCE_FOLDER, build_scoring_model, encode_texts, load_backbone, load_scoring_model,
)


def serving_device(device: str) -> str:
    """``auto``: the GPU where torch sees one (a cross-mode scorer is slow on CPUs), else the CPU.
    A device torch cannot name, or CUDA where torch sees none, is a UsageError naming --device."""
    from trainers.config import _cuda_check
    from trainers.errors import UsageError

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device: {device!r} is not a device torch knows (cpu, cuda, cuda:1, ...)") from None
    _cuda_check(device)
    return device


def check_batch_size(batch_size: int) -> int:
    if batch_size < 1:
        from trainers.errors import UsageError

        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    return batch_size


class PreferenceScorer:
    def __init__(self, model, tokenizer, meta: dict, reference=None, device: str = "cpu", batch_size: int = 64):
        self.model, self.tokenizer, self.meta = model.to(device).eval(), tokenizer, meta
        self.reference = None if reference is None else reference.to(device).eval()
        self.device, self.batch_size = torch.device(device), batch_size

    @classmethod
    def load(cls, folder: str | Path, device: str = "auto", batch_size: int = 64):
        """The scorer in ``folder``: this class, or a :class:`PairScorer` (:class:`CrossScorer`) for
        a pair-mode (cross-mode) one, on ``device`` (``auto``: see :func:`serving_device`)."""
        device, batch_size = serving_device(device), check_batch_size(batch_size)
        judge = JUDGE_SCORERS.get(judge_mode(folder))
        if judge is not None:
            return judge.load(folder, device, batch_size)
        model, tokenizer, meta = load_scoring_model(folder)
        reference = None
        if meta["mode"] == "causal" and meta.get("uses_reference", True):
            backbone, _ = load_backbone(Path(folder) / REFERENCE_FOLDER, "causal")
            reference = build_scoring_model("causal", backbone)
        return cls(model, tokenizer, meta, reference, device, batch_size)

    @torch.no_grad()
    def rewards(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """One reward per (prompt, response), comparable across responses to the same prompt."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not responses:
            return np.zeros(0)
        m = self.meta
        texts = encode_texts(self.tokenizer, list(prompts), list(responses), m["mode"], m["max_length"], m["max_prompt_length"])
        out = []
        for start in range(0, len(texts), self.batch_size):
            index = torch.arange(start, min(start + self.batch_size, len(texts)))
            batch = [t.to(self.device) for t in texts.batch(index)]
            value = self.model(*batch).double()
            if self.reference is not None:
                value = value - self.reference(*batch).double()
            out.append(value.cpu())
        return (m["reward_scale"] * torch.cat(out)).numpy()

    def prob_a_better(self, prompts: list[str], outputs_a: list[str], outputs_b: list[str]) -> np.ndarray:
        reward = self.rewards(list(prompts) + list(prompts), list(outputs_a) + list(outputs_b))
        n = len(outputs_a)
        return 1.0 / (1.0 + np.exp(-(reward[:n] - reward[n:])))

    def rank(self, prompt: str, candidates: list[str]) -> list[int]:
        """Indices of ``candidates``, best first: one reward each (n scorings, not n^2 pairs)."""
        reward = self.rewards([prompt] * len(candidates), list(candidates))
        return [int(i) for i in np.argsort(-reward, kind="stable")]

    def score_pairs(self, pairs: PreferencePairs) -> tuple[np.ndarray, float]:
        """P(a better) for every pair and the pairs/s it took."""
        started = time.perf_counter()
        prob = self.prob_a_better(pairs.prompt, pairs.a, pairs.b)
        return prob, len(pairs) / max(time.perf_counter() - started, 1e-9)


def judge_mode(folder: str | Path) -> str | None:
    """The ``mode`` in a scorer folder's ``scorer.json`` (None without one)."""
    from trainers.files import read_json

    path = Path(folder) / "scorer.json"
    if not path.is_file():
        return None
    meta = read_json(path, "scorer description")
    return meta.get("mode") if isinstance(meta, dict) else None


class PairScorer:
    """A pair-mode scorer: it reads both answers, so it scores pairs, not single responses.

    Each distinct answer is encoded once (lower then top layers) and its pooled state kept in an
    in-memory cache of ``answer_cache`` entries, so an answer met again in later pairs or calls is
    not re-encoded. P(b better than a) is exactly 1 - P(a better than b).
    """

    def __init__(self, model, cfg, meta: dict, device: str = "cpu", batch_size: int = 64, answer_cache: int = 100_000):
        self.model, self.cfg, self.meta = model, cfg, meta
        self.model.judge.to(device).eval()
        self.device, self.batch_size, self.answer_cache = torch.device(device), batch_size, answer_cache
        self._h: dict[str, torch.Tensor] = {}

    @classmethod
    def load(cls, folder: str | Path, device: str = "auto", batch_size: int = 64) -> "PairScorer":
        from trainers.files import read_json

        device = serving_device(device)
        meta = read_json(Path(folder) / "scorer.json", "scorer description")
        model, cfg = cls.load_model(folder, meta)
        return cls(model, cfg, meta, device, batch_size)

    @staticmethod
    def load_model(folder: str | Path, meta: dict):
        from trainers.pair import load_pair_model

        return load_pair_model(folder, meta)

    @torch.no_grad()
    def answer_states(self, texts: list[str]) -> torch.Tensor:
        """Pooled states of ``texts`` (new ones encoded in sorted order, so the result for a text
        does not depend on which other texts came with it)."""
        from trainers.pair import encode_raw

        new = sorted(set(texts) - set(self._h))
        for start in range(0, len(new), self.batch_size):
            part = new[start:start + self.batch_size]
            for text, h in zip(part, encode_raw(self.model, part, self.cfg, self.device)):
                self._h[text] = h
        states = torch.stack([self._h[t] for t in texts]) if texts else torch.zeros(0)
        if len(self._h) > self.answer_cache:
            self._h.clear()  # after reading this call's states: one call may hold more than the cache
        return states

    def side_features(self, texts: list[str]) -> torch.Tensor:
        """The judge's side features of ``texts`` (lengths counted before any truncation)."""
        from trainers.models.pair import side_features

        counts = [len(ids) for ids in self.model.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]
        return torch.as_tensor(side_features(texts, np.array(counts, dtype=np.int64))).to(self.device)

    @staticmethod
    def check_lengths(prompts, outputs_a, outputs_b) -> None:
        if not (len(prompts) == len(outputs_a) == len(outputs_b)):
            raise ValueError(f"{len(prompts)} prompts, {len(outputs_a)} a answers, {len(outputs_b)} b answers")

    @torch.no_grad()
    def prob_a_better(self, prompts: list[str], outputs_a: list[str], outputs_b: list[str]) -> np.ndarray:
        from trainers.models.pair import prob_from_logit

        self.check_lengths(prompts, outputs_a, outputs_b)
        if not outputs_a:
            return np.zeros(0)
        h = self.answer_states(list(outputs_a) + list(outputs_b))
        features = self.side_features(list(outputs_a) + list(outputs_b))
        n = len(outputs_a)
        logit = self.model.judge.logit(h[:n].to(self.device), h[n:].to(self.device), features[:n], features[n:])
        return prob_from_logit(logit.double().cpu().numpy())

    def rank(self, prompt: str, candidates: list[str]) -> list[int]:
        """Indices of ``candidates``, best first, by their summed P(better) against every other."""
        n = len(candidates)
        i, j = np.triu_indices(n, 1)
        prob = self.prob_a_better([prompt] * len(i), [candidates[k] for k in i], [candidates[k] for k in j])
        wins = np.zeros(n)
        np.add.at(wins, i, prob)
        np.add.at(wins, j, 1.0 - prob)
        return [int(k) for k in np.argsort(-wins, kind="stable")]

    def score_pairs(self, pairs: PreferencePairs) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        prob = self.prob_a_better(pairs.prompt, pairs.a, pairs.b)
        return prob, len(pairs) / max(time.perf_counter() - started, 1e-9)


class CrossScorer(PairScorer):
    """A cross-mode scorer: the prompt and both answers through the whole encoder, in both orders
    (so P(b better than a) is exactly 1 - P(a better than b)); nothing is shared across pairs."""

    @staticmethod
    def load_model(folder: str | Path, meta: dict):
        from trainers.cross import load_cross_model

        return load_cross_model(folder, meta)

    @torch.no_grad()
    def prob_a_better(self, prompts: list[str], outputs_a: list[str], outputs_b: list[str]) -> np.ndarray:
        from trainers.models.pair import prob_from_logit

        self.check_lengths(prompts, outputs_a, outputs_b)
        features = self.side_features(list(outputs_a) + list(outputs_b))
        n, logits = len(outputs_a), []
        for start in range(0, n, self.batch_size):
            part = slice(start, min(start + self.batch_size, n))
            logits.append(self.model.logits(list(prompts[part]), list(outputs_a[part]), list(outputs_b[part]),
                                            features[:n][part], features[n:][part], self.cfg, self.device).double().cpu())
        return prob_from_logit(torch.cat(logits).numpy()) if logits else np.zeros(0)


JUDGE_SCORERS = {"pair": PairScorer, "cross": CrossScorer}
