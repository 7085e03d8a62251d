"""Pair mode: a judge that reads both answers at once, over cached lower-layer token states.

An answer is cut into windows of ``window`` tokens (``[CLS] chunk [SEP]`` each, at most
``max_windows``; the rest is truncated and counted). The encoder's lower layers run once per
distinct text and their states are cached on disk (``trainers.data.state_cache``); the top
``k`` layers run over those states, are fine-tuned, and are mean-pooled over every real token
of every window into ``h``. A pair head reads ``[h_a, h_b, h_a - h_b, h_a * h_b]`` and side
features of both texts (length in tokens, log length ratio, list items, newlines, code blocks).

Antisymmetric by construction: the logit is ``g(a, b) - g(b, a)``, so swapping the answers
negates it exactly and :func:`prob_from_logit` turns that into exactly ``1 - p``.
"""
from __future__ import annotations

import hashlib
import math
import re
import warnings

import numpy as np
import torch
from torch import nn

SIDE_FEATURES = ("log_tokens", "list_items", "newlines", "code_blocks", "headers", "log_chars")
LIST_ITEM = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+", re.MULTILINE)
HEADER_LINE = re.compile(r"^\s*#{1,6}\s|^\s*\*\*[^*\n]+\*\*\s*:?\s*$", re.MULTILINE)


# -- texts to windows and side features --------------------------------------------------------


def text_windows(tokenizer, texts: list[str], window: int, max_windows: int) -> tuple[list[list[list[int]]], np.ndarray]:
    """Per text, its windows of token ids (``[CLS] chunk [SEP]``), and its full token count
    (before truncation: the side feature keeps the length the windows cut off)."""
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    out = []
    for tokens in ids:
        chunks = [tokens[i:i + window] for i in range(0, len(tokens), window)][:max_windows] or [[]]
        out.append([[cls] + chunk + [sep] for chunk in chunks])
    return out, np.array([len(t) for t in ids], dtype=np.int64)


def truncated_count(token_counts: np.ndarray, budget: int) -> int:
    """How many texts are longer than the ``budget`` tokens a judge reads of an answer."""
    return int((token_counts > budget).sum())


def side_features(texts: list[str], token_counts: np.ndarray) -> np.ndarray:
    """``[N, len(SIDE_FEATURES)]`` per-text features, log-compressed counts."""
    rows = []
    for text, tokens in zip(texts, token_counts):
        rows.append([math.log1p(tokens), math.log1p(len(LIST_ITEM.findall(text))), math.log1p(text.count("\n")),
                     math.log1p(text.count("```") // 2), math.log1p(len(HEADER_LINE.findall(text))),
                     math.log1p(len(text))])
    return np.asarray(rows, dtype=np.float32).reshape(len(texts), len(SIDE_FEATURES))


def pad_windows(windows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(w) for w in windows)
    ids = torch.full((len(windows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(windows), width), dtype=torch.long)
    for i, w in enumerate(windows):
        ids[i, :len(w)] = torch.tensor(w)
        attention[i, :len(w)] = 1
    return ids, attention


# -- splitting an encoder into frozen lower layers and trainable top layers ---------------------


def split_encoder(backbone: nn.Module, top_layers: int) -> tuple[nn.Module, nn.ModuleList]:
    """(lower: the embeddings and the first L - k layers as a model of its own, top: the last k
    layers). ``backbone`` is consumed."""
    layers = backbone.encoder.layer
    if not 0 <= top_layers <= len(layers):
        raise ValueError(f"--top-layers must be in [0, {len(layers)}] for this model, got {top_layers}")
    cut = len(layers) - top_layers
    top = nn.ModuleList(list(layers)[cut:])
    backbone.encoder.layer = nn.ModuleList(list(layers)[:cut])
    backbone.config.num_hidden_layers = cut
    backbone.pooler = None
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone.eval(), top


def quantize_lower(lower: nn.Module) -> nn.Module:
    """Dynamic int8 quantisation of the frozen layers' linear maps (~1.5x faster on 2 CPUs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(lower, {nn.Linear}, dtype=torch.qint8)


def lower_key(lower: nn.Module, window: int, max_windows: int, quantized: bool, dtype: str) -> str:
    """The cache key: a hash of the lower layers' weights, their shape and the windowing."""
    # "per-text": states computed one text per batch (trainers.pair.encode_windows); caches
    # filled before, with batch-dependent int8 states, are not read.
    digest = hashlib.sha256(f"{lower.config.to_json_string()}|{window}|{max_windows}|{quantized}|{dtype}|per-text".encode())
    for name, tensor in sorted(lower.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def cpu_runs_bf16() -> bool:
    """Whether this CPU has native bfloat16 matrix units (AVX-512 BF16 or AMX). Without them
    oneDNN emulates bfloat16: a linear layer ran 6x slower than float32 and pair-mode training
    ~30x slower (0.3 pairs/s) on a 2-core AVX2 machine, so ``--bf16`` only applies where this holds."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private probe: absent in some builds
        return False


@torch.no_grad()
def lower_states(lower: nn.Module, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    return lower(input_ids=ids, attention_mask=attention).last_hidden_state


def additive_mask(lengths: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
    keep = torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]
    return torch.zeros(keep.shape, dtype=dtype, device=lengths.device).masked_fill(~keep, torch.finfo(dtype).min)[:, None, None, :]


# -- the trainable part ------------------------------------------------------------------------------


class PairJudge(nn.Module):
    """Top layers over window states, mean pooling per text, and the antisymmetric pair head."""

    def __init__(self, top: nn.ModuleList, hidden: int, head_width: int = 256, dropout: float = 0.1, bf16: bool = False):
        super().__init__()
        self.top = top
        self.bf16 = bf16  # bfloat16 autocast for the top layers on a CPU (~1.8x on 2 cores); the head stays float32
        n_side = len(SIDE_FEATURES)
        self.register_buffer("side_mean", torch.zeros(n_side))
        self.register_buffer("side_std", torch.ones(n_side))
        self.head = nn.Sequential(nn.Linear(4 * hidden + 3 * n_side + 1, head_width), nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(head_width, 1))

    def set_side_scale(self, features: np.ndarray) -> None:
        """Standardise side features with statistics of the training texts (kept in the model)."""
        x = torch.as_tensor(features, dtype=torch.float32)
        self.side_mean.copy_(x.mean(0))
        self.side_std.copy_(x.std(0).clamp_min(1e-3))

    def encode(self, states: torch.Tensor, lengths: torch.Tensor, owner: torch.Tensor, n_texts: int) -> torch.Tensor:
        """``states`` [W, T, H] of all windows, ``owner`` [W] their text's index -> ``h`` [n_texts, H]."""
        hidden = states
        if len(self.top):
            mask = additive_mask(lengths, hidden.shape[1], hidden.dtype)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16 and hidden.device.type == "cpu"):
                for layer in self.top:
                    hidden = layer(hidden, attention_mask=mask)
                    hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            hidden = hidden.float()
        real = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]).to(hidden.dtype)
        summed = torch.zeros(n_texts, hidden.shape[2], dtype=hidden.dtype, device=hidden.device)
        summed.index_add_(0, owner, (hidden * real[:, :, None]).sum(1))
        counts = torch.zeros(n_texts, dtype=hidden.dtype, device=hidden.device).index_add_(0, owner, real.sum(1))
        return summed / counts.clamp_min(1.0)[:, None]

    def _one_order(self, ha, hb, fa, fb) -> torch.Tensor:
        ratio = (fa[:, :1] - fb[:, :1])  # log token-length ratio (before standardising)
        sa, sb = (fa - self.side_mean) / self.side_std, (fb - self.side_mean) / self.side_std
        x = torch.cat([ha, hb, ha - hb, ha * hb, sa, sb, sa - sb, ratio], dim=1)
        return self.head(x).squeeze(-1)

    def logit(self, ha: torch.Tensor, hb: torch.Tensor, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        """``g(a, b) - g(b, a)``: swapping a and b negates it exactly (the same two calls, reversed)."""
        return self._one_order(ha, hb, fa, fb) - self._one_order(hb, ha, fb, fa)


def prob_from_logit(logit: np.ndarray) -> np.ndarray:
    """P(a better) = sigmoid(logit), computed from |logit| so that P(-z) == 1 - P(z) bit for bit."""
    z = np.asarray(logit, dtype=np.float64)
    q = 1.0 / (1.0 + np.exp(-np.abs(z)))  # in [0.5, 1]: 1 - q is exact there
    return np.where(z >= 0, q, 1.0 - q)
