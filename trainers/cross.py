"""The cross-mode recipe (``train-dpo --mode cross``): a full cross-encoder over
``[prompt] [SEP] [a] [SEP] [b]``, fine-tuned end to end; the GPU recipe beside pair mode.

It runs through pair mode's machinery (``trainers/pair.py``: the pair table, the resumable
epoch, evaluation, the candidates of a search) behind the same judge interface as
:class:`trainers.pair.PairModel`; what differs is here: no cache (every step runs the whole
encoder over both orders of each pair), the input built from the prompt and both answers,
and the saved scorer. No Ray here.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from trainers.config import DPOConfig
from trainers.models.cross import CrossJudge, answer_budget, pair_sequences
from trainers.pair import PairTexts, Progress, load_full_backbone, save_judge_scorer


@dataclass
class CrossModel:
    judge: CrossJudge
    tokenizer: object

    def text_budget(self, cfg: DPOConfig) -> int:
        """Tokens an answer keeps when both are long and the prompt takes its full share."""
        return answer_budget(cfg.max_length, cfg.max_prompt_length) // 2

    def prepare_cache(self, cfg: DPOConfig, texts: list[str], progress: Progress | None = None):
        """Nothing to cache: every layer is trained."""
        return None, {"texts": len(texts), "computed": 0, "rebuilt": 0, "cache_seconds": 0.0}

    def token_ids(self, texts: list[str], keep: int, last: bool = False) -> list[list[int]]:
        """Each text's ids, cut to ``keep`` tokens (its last ones with ``last``: a prompt's question
        is at its end)."""
        if keep <= 0:
            return [[] for _ in texts]
        ids = self.tokenizer(list(texts), add_special_tokens=False, verbose=False,
                             truncation=not last, max_length=None if last else keep)["input_ids"]
        return [t[-keep:] if last else t for t in ids]

    def logits(self, prompts: list[str], a: list[str], b: list[str], fa: torch.Tensor, fb: torch.Tensor,
               cfg: DPOConfig, device) -> torch.Tensor:
        """Logits of P(a better) for pairs given as text: both orders through the encoder."""
        p = self.token_ids(prompts, cfg.max_prompt_length, last=True)
        room = answer_budget(cfg.max_length, 0)
        ia, ib = self.token_ids(a, room), self.token_ids(b, room)
        ab = [t.to(device) for t in pair_sequences(self.tokenizer, p, ia, ib, cfg.max_length)]
        ba = [t.to(device) for t in pair_sequences(self.tokenizer, p, ib, ia, cfg.max_length)]
        return self.judge.logit(ab, ba, fa.to(device), fb.to(device))

    def batch_logits(self, cache, data: PairTexts, index: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor,
                     cfg: DPOConfig, device) -> torch.Tensor:
        prompts = [data.prompts[i] for i in index.tolist()]
        return self.logits(prompts, [data.texts[i] for i in ia.tolist()], [data.texts[i] for i in ib.tolist()],
                           data.features[ia], data.features[ib], cfg, device)

    def all_logits(self, cache, data: PairTexts, cfg: DPOConfig, device) -> torch.Tensor:
        out = []
        for start in range(0, len(data), cfg.eval_batch_size):
            index = torch.arange(start, min(start + cfg.eval_batch_size, len(data)))
            out.append(self.batch_logits(cache, data, index, data.a[index], data.b[index], cfg, device))
        return torch.cat(out) if out else torch.zeros(0)


def build_cross_model(cfg: DPOConfig, backbone=None, tokenizer=None) -> CrossModel:
    if backbone is None:
        backbone, tokenizer = load_full_backbone(cfg, positions=cfg.max_length)
    backbone.pooler = None  # mean pooling; an unused pooler would get no gradient
    torch.manual_seed(cfg.seed)
    return CrossModel(CrossJudge(backbone, backbone.config.hidden_size), tokenizer)


def save_cross_scorer(folder: str | Path, cfg: DPOConfig, best_state: dict, meta: dict) -> None:
    """The fine-tuned encoder in Hugging Face format, the head, and ``scorer.json``."""
    from trainers.models.preference import quiet_transformers

    quiet_transformers()
    backbone, tokenizer = load_full_backbone(cfg, positions=cfg.max_length)
    backbone.pooler = None
    backbone.load_state_dict({k[len("top."):]: v for k, v in best_state.items() if k.startswith("top.")})
    save_judge_scorer(folder, backbone, tokenizer, best_state,
                      {**meta, "mode": "cross", "max_length": cfg.max_length, "max_prompt_length": cfg.max_prompt_length})


def load_cross_model(folder: str | Path, meta: dict) -> tuple[CrossModel, DPOConfig]:
    from trainers.models.preference import load_backbone, scorer_int
    from trainers.pair import load_judge_head

    folder = Path(folder)
    prompt = scorer_int(meta, folder, "max_prompt_length", 0)
    cfg = replace(DPOConfig(mode="cross", model=str(folder)), max_length=scorer_int(meta, folder, "max_length", prompt + 4),
                  max_prompt_length=prompt)
    backbone, tokenizer = load_backbone(folder, "encoder")
    model = build_cross_model(cfg, backbone, tokenizer)
    load_judge_head(model.judge, folder)
    return model, cfg
