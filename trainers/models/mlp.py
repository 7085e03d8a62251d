"""K independent MLPs stored as stacked weights, evaluated in one batched matmul.

A population of candidates (different losses, different seeds) trains in one vectorised step:
member k has its own weights ``W[k]``; ``forward`` maps inputs ``[K, B, in]`` to logits ``[K, B]``.
K = 1 is an ordinary MLP. Plain ``torch.baddbmm`` rather than ``torch.func.vmap`` over an
``nn.Module``: it is the same arithmetic, works with every optimiser unchanged (Adam and AdamW
are elementwise, so member k's update is exactly its solo update), and needs no functional
state juggling. There is deliberately no BatchNorm: running statistics would mix members.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


class StackedMLP(nn.Module):
    def __init__(
        self,
        members: int,
        in_dim: int,
        hidden: int = 256,
        depth: int = 2,
        dropout: float = 0.0,
        seeds: Sequence[int] | None = None,
    ):
        """``depth`` hidden layers of width ``hidden`` (depth 0 is a linear model), one logit out.

        ``seeds[k]`` fixes member k's initial weights, so a member gets the same start whether it
        trains alone or in a population.
        """
        super().__init__()
        if members < 1:
            raise ValueError("a population needs at least one member")
        if depth < 0 or hidden < 1:
            raise ValueError(f"need depth >= 0 and hidden >= 1, got depth={depth}, hidden={hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        seeds = list(range(members)) if seeds is None else list(seeds)
        if len(seeds) != members:
            raise ValueError(f"{members} members but {len(seeds)} seeds")
        self.members, self.dropout = members, dropout
        dims = [in_dim] + [hidden] * depth + [1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(dims[:-1], dims[1:]):
            self.weights.append(nn.Parameter(torch.empty(members, fan_in, fan_out)))
            self.biases.append(nn.Parameter(torch.empty(members, 1, fan_out)))
        with torch.no_grad():
            for k, seed in enumerate(seeds):
                g = torch.Generator().manual_seed(int(seed))
                for w, b in zip(self.weights, self.biases):
                    # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases.
                    bound = 1.0 / math.sqrt(w.shape[1])
                    w[k].uniform_(-bound, bound, generator=g)
                    b[k].uniform_(-bound, bound, generator=g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[K, B, in]`` (or ``[B, in]``, shared by every member) -> logits ``[K, B]``."""
        if x.dim() == 2:
            x = x.expand(self.members, *x.shape)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = torch.relu(x)
                if self.dropout and self.training:
                    x = nn.functional.dropout(x, self.dropout, training=True)
        return x.squeeze(-1)
