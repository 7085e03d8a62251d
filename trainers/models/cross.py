"""Cross mode: a full cross-encoder that reads the prompt and both answers in one sequence,
``[CLS] prompt [SEP] answer_1 [SEP] answer_2 [SEP]``, every layer fine-tuned end to end.

It is pair mode's GPU recipe: attention runs across the two answers (pair mode only compares
their pooled states), at the price of running the whole encoder per pair and per order, with
no cache, which a CPU cannot afford on all the data. The prompt keeps its last
``max_prompt_length`` tokens; the answers share the rest of ``max_length`` (a short answer
leaves its unused share to the other).

Antisymmetric by construction, as pair mode: the logit is ``g(a, b) - g(b, a)``, two separate
forward passes over the two orders, so swapping the answers negates it exactly.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trainers.models.pair import SIDE_FEATURES

SPECIAL_TOKENS = 4  # [CLS] and three [SEP]


def answer_budget(max_length: int, prompt_tokens: int) -> int:
    """Tokens both answers share after the prompt and the special tokens."""
    return max(0, max_length - prompt_tokens - SPECIAL_TOKENS)


def split_budget(budget: int, len_first: int, len_second: int) -> tuple[int, int]:
    """How many tokens each answer keeps: half each, a short answer leaving the rest to the other."""
    first = min(len_first, max(budget // 2, budget - len_second))
    return first, min(len_second, budget - first)


def pair_sequences(tokenizer, prompts: list[list[int]], first: list[list[int]], second: list[list[int]],
                   max_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids (already truncated prompts, full answers) -> padded ``(ids, attention, types)``;
    type 0 for the prompt, 1 for the answers."""
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id or 0
    rows, types = [], []
    for p, x, y in zip(prompts, first, second):
        kx, ky = split_budget(answer_budget(max_length, len(p)), len(x), len(y))
        head = [cls] + p + [sep]
        tail = x[:kx] + [sep] + y[:ky] + [sep]
        rows.append(head + tail)
        types.append([0] * len(head) + [1] * len(tail))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    type_ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, kind) in enumerate(zip(rows, types)):
        ids[i, :len(row)], type_ids[i, :len(row)], attention[i, :len(row)] = torch.tensor(row), torch.tensor(kind), 1
    return ids, attention, type_ids


class CrossJudge(nn.Module):
    """The whole encoder (named ``top`` as pair mode's trained layers are, so both share one
    optimiser set-up), mean pooling over the sequence, a linear head, and the side features'
    difference through a linear map (zero at the start: the encoder learns first)."""

    def __init__(self, encoder: nn.Module, hidden: int, dropout: float = 0.1):
        super().__init__()
        self.top = encoder
        n_side = len(SIDE_FEATURES)
        self.register_buffer("side_mean", torch.zeros(n_side))
        self.register_buffer("side_std", torch.ones(n_side))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.side = nn.Linear(n_side, 1, bias=False)
        nn.init.zeros_(self.side.weight)

    def set_side_scale(self, features: np.ndarray) -> None:
        x = torch.as_tensor(features, dtype=torch.float32)
        self.side_mean.copy_(x.mean(0))
        self.side_std.copy_(x.std(0).clamp_min(1e-3))

    def _one_order(self, ids, attention, types, f_first, f_second) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=ids.is_cuda):  # the GPU recipe's speed
            hidden = self.top(input_ids=ids, attention_mask=attention, token_type_ids=types).last_hidden_state.float()
        real = attention.to(hidden.dtype)[:, :, None]
        pooled = (hidden * real).sum(1) / real.sum(1).clamp_min(1.0)
        side = self.side((f_first - f_second) / self.side_std)
        return (self.head(pooled) + side).squeeze(-1)

    def logit(self, ab: tuple, ba: tuple, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        """``ab``/``ba``: ``(ids, attention, types)`` of both orders of the same pairs."""
        return self._one_order(*ab, fa, fb) - self._one_order(*ba, fb, fa)
