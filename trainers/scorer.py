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
from trainers.models.preference import encode_texts, load_backbone, load_scoring_model, build_scoring_model

REFERENCE_FOLDER = "reference"


class PreferenceScorer:
    def __init__(self, model, tokenizer, meta: dict, reference=None, device: str = "cpu", batch_size: int = 64):
        self.model, self.tokenizer, self.meta = model.to(device).eval(), tokenizer, meta
        self.reference = None if reference is None else reference.to(device).eval()
        self.device, self.batch_size = torch.device(device), batch_size

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu", batch_size: int = 64) -> "PreferenceScorer":
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
