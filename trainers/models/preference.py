"""Models for preference training: a scalar-head encoder, a causal LM's completion log-prob, the
built-in tiny models, and the one place texts become token ids (with explicit truncation).

Two modes:
  * ``encoder``: a Hugging Face encoder (AutoModel) mean-pools [CLS] prompt [SEP] response [SEP]
    and a linear head gives one score. The head starts at zero, so the frozen reference (the
    initial model) scores every response 0 and a served scorer needs no reference model.
  * ``causal``: AutoModelForCausalLM; log pi(y|x) is the sum of the log-probs of the response
    tokens (and the closing EOS) after [BOS] prompt, with prompt tokens masked out.

Truncation: the prompt keeps its last ``max_prompt_length`` tokens (the end of an instruction is
what the answer follows), the response keeps its first tokens up to ``max_length`` in all. Pairs
are truncated, never dropped; the count is reported.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainers.errors import DataError, UsageError
from trainers.files import read_json, write_json

MODES = ("encoder", "causal")


# -- the built-in tiny models (no files, no downloads) ------------------------------------------


def word_tokenizer(words: list[str]):
    """A whitespace word-level fast tokenizer over ``words`` plus special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[BOS]", "[EOS]"]
    vocab = {w: i for i, w in enumerate(specials + [w for w in words if w not in specials])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", bos_token="[BOS]", eos_token="[EOS]")


TINY_LAYERS = 2


def tiny_backbone(mode: str, vocab_size: int, seed: int, max_positions: int = 128):
    """A 2-layer, 64-wide randomly initialised BERT (encoder) or GPT-2 (causal)."""
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    if mode == "encoder":
        config = BertConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=TINY_LAYERS, num_attention_heads=2,
                            intermediate_size=128, max_position_embeddings=max_positions)
        return BertModel(config)
    config = GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=TINY_LAYERS, n_head=2, n_positions=max_positions)
    return GPT2LMHeadModel(config)


def quiet_transformers() -> None:
    """No load reports or progress bars: a scorer loads its own files, nothing is missing."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


def check_model_folder(model_dir: str | Path, mode: str) -> Path:
    """A local Hugging Face model folder, checked without loading it: its config names a model
    type and there are weights. One DataError naming the folder and the missing file if not."""
    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        raise DataError(folder, "no such model folder" if not folder.exists() else "not a folder", "--model", kind="option")
    config = read_json(folder / "config.json", "Hugging Face model config")
    if not isinstance(config, dict) or "model_type" not in config:
        raise DataError(folder / "config.json", "missing (a Hugging Face config names its model_type)", "model_type", kind="field")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise DataError(folder, f"no weights ({' or '.join(WEIGHT_FILES[:2])})", "--model", kind="option")
    return folder


def check_preference_model(cfg) -> None:
    """``cfg.model`` (a DPOConfig's; None: the built-in tiny one) loads as the mode needs, and pair
    mode's ``--top-layers`` fits it: a missing, torn or wrong-kind model fails before anything
    runs, not in a worker."""
    if cfg.model is None:
        layers = range(TINY_LAYERS)
    else:
        backbone, _ = load_backbone(cfg.model, "causal" if cfg.mode == "causal" else "encoder")
        layers = getattr(getattr(backbone, "encoder", None), "layer", None)
        positions = getattr(backbone.config, "max_position_embeddings", None)
        if cfg.mode == "cross" and positions is not None and cfg.max_length > positions:
            raise UsageError(f"--max-length {cfg.max_length}: the model reads at most {positions} tokens")
        if cfg.mode == "pair" and positions is not None and cfg.window + 2 > positions:  # [CLS] window [SEP]
            raise UsageError(f"--window {cfg.window}: the model reads at most {positions} tokens, so a window holds "
                             f"at most {positions - 2}")
    if cfg.mode == "cross" and layers is None:
        raise UsageError("--mode cross needs a BERT-style encoder (token types, encoder.layer); this model is not one")
    if cfg.mode == "pair" and (layers is None or cfg.top_layers > len(layers)):
        raise UsageError(f"--top-layers {cfg.top_layers}: the {'built-in model' if cfg.model is None else 'model'} has "
                         f"{'no BERT-style' if layers is None else len(layers)} encoder layers")


def load_backbone(model_dir: str | Path, mode: str):
    """(model, tokenizer) from a local Hugging Face folder; never touches the network. A folder
    that is not a loadable model (truncated weights, wrong kind for ``mode``) is a DataError."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    folder = check_model_folder(model_dir, mode)
    cls = AutoModel if mode == "encoder" else AutoModelForCausalLM
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = cls.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(folder, f"cannot be loaded as a {mode} model: {first}") from None
    except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError for torn files
        if type(err).__name__ != "SafetensorError":
            raise
        raise DataError(folder, f"the weights file is damaged (truncated or not safetensors): {err}") from None
    return model, tokenizer


# -- token ids -------------------------------------------------------------------------------


@dataclass
class EncodedTexts:
    """One side of every pair, padded: ids/attention ``[N, L]``, ``scored`` marks the tokens
    whose log-probs form log pi(y|x) (causal mode; unused by the encoder)."""

    ids: torch.Tensor
    attention: torch.Tensor
    scored: torch.Tensor
    truncated: int  # pairs whose prompt or response lost tokens

    def __len__(self) -> int:
        return self.ids.shape[0]

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows ``index``, trimmed to their longest real length (saves compute on short batches)."""
        attention = self.attention[index]
        width = int(attention.sum(1).max())
        return self.ids[index, :width], attention[:, :width], self.scored[index, :width]


def special_ids(tokenizer, mode: str) -> tuple[int, int, int]:
    """(start, end, pad) ids: [CLS]/[SEP] for encoders, BOS/EOS for causal models."""
    first = [tokenizer.cls_token_id, tokenizer.bos_token_id] if mode == "encoder" else [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.cls_token_id]
    last = [tokenizer.sep_token_id, tokenizer.eos_token_id] if mode == "encoder" else [tokenizer.eos_token_id, tokenizer.sep_token_id]
    start = next((i for i in first if i is not None), None)
    end = next((i for i in last if i is not None), None)
    if start is None or end is None:
        raise UsageError(f"the tokenizer has no start/end special tokens for --mode {mode}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    return start, end, pad


def encode_texts(tokenizer, prompts: list[str], responses: list[str], mode: str, max_length: int,
                 max_prompt_length: int) -> EncodedTexts:
    if max_prompt_length < 0 or max_length < max_prompt_length + 4:
        raise ValueError(f"need max_length >= max_prompt_length + 4, got {max_length} and {max_prompt_length}")
    start, end, pad = special_ids(tokenizer, mode)
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    rows, scored_rows, truncated = [], [], 0
    for p, r in zip(prompt_ids, response_ids):
        p_kept = p[len(p) - max_prompt_length:] if len(p) > max_prompt_length else p
        if mode == "encoder":
            room = max_length - len(p_kept) - 3  # [CLS] prompt [SEP] response [SEP]
            r_kept = r[:room]
            ids = [start] + p_kept + [end] + r_kept + [end]
            scored = [0] * len(ids)
        else:
            room = max_length - len(p_kept) - 2  # [BOS] prompt response [EOS]
            r_kept = r[:room]
            ids = [start] + p_kept + r_kept + [end]
            scored = [0] * (1 + len(p_kept)) + [1] * (len(r_kept) + 1)  # the response and its EOS
        truncated += len(p_kept) < len(p) or len(r_kept) < len(r)
        rows.append(ids)
        scored_rows.append(scored)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    scored = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (r, s) in enumerate(zip(rows, scored_rows)):
        ids[i, : len(r)] = torch.tensor(r)
        attention[i, : len(r)] = 1
        scored[i, : len(s)] = torch.tensor(s, dtype=torch.bool)
    return EncodedTexts(ids, attention, scored, truncated)


# -- the two scoring functions ------------------------------------------------------------------


class EncoderScorer(nn.Module):
    """A Hugging Face encoder, mean-pooled over real tokens, and a zero-initialised linear head."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, ids: torch.Tensor, attention: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.encoder(input_ids=ids, attention_mask=attention).last_hidden_state
        mask = attention.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.head(pooled).squeeze(-1)


class CompletionLogProb(nn.Module):
    """log pi(y|x): the summed log-probs of the ``scored`` (response) tokens of a causal LM."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor, attention: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
        logits = self.lm(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
        targets = ids[:, 1:]
        token_logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return (token_logp * scored[:, 1:].to(token_logp.dtype)).sum(1)


def build_scoring_model(mode: str, backbone: nn.Module) -> nn.Module:
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {MODES}, got {mode!r}")
    return EncoderScorer(backbone) if mode == "encoder" else CompletionLogProb(backbone)


def backbone_of(model: nn.Module) -> nn.Module:
    return model.encoder if isinstance(model, EncoderScorer) else model.lm


SCORER_FILE = "scorer.json"
HEAD_FILE = "head.pt"
REFERENCE_FOLDER = "reference"  # a causal scorer's frozen reference model, beside it


def save_scoring_model(model: nn.Module, tokenizer, folder: str | Path, meta: dict) -> None:
    """A folder any machine can load with :func:`load_scoring_model`: the backbone and tokenizer
    in Hugging Face format, the encoder head, and ``scorer.json`` (mode, beta, truncation...)."""
    quiet_transformers()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    backbone_of(model).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if isinstance(model, EncoderScorer):
        torch.save(model.head.state_dict(), folder / HEAD_FILE)
    write_json(folder / SCORER_FILE, meta)


SCORER_FIELDS = ("mode", "reward_scale", "max_length", "max_prompt_length")


def scorer_int(meta: dict, folder: str | Path, name: str, least: int, most: int | None = None) -> int:
    """An integer field of a scorer's ``scorer.json`` in [least, most], or a DataError naming it
    (the pair and cross scorers read theirs beyond :data:`SCORER_FIELDS`)."""
    if name not in meta:
        raise DataError(Path(folder) / SCORER_FILE, "missing", name, kind="field")
    value = meta[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < least or (most is not None and value > most):
        bound = f"between {least} and {most}" if most is not None else f">= {least}"
        raise DataError(Path(folder) / SCORER_FILE, f"must be an integer {bound}, got {value!r}", name, kind="field")
    return value


def load_scoring_model(folder: str | Path) -> tuple[nn.Module, object, dict]:
    folder = Path(folder)
    if not (folder / SCORER_FILE).is_file():
        raise DataError(folder, f"not a lossforge scorer (no {SCORER_FILE}); train one with `lossforge train-dpo`")
    meta = read_json(folder / SCORER_FILE, "scorer description")
    if not isinstance(meta, dict):
        raise DataError(folder / SCORER_FILE, "not a scorer description (the top level is not an object)")
    for name in SCORER_FIELDS:
        if name not in meta:
            raise DataError(folder / SCORER_FILE, "missing", name, kind="field")
    if meta["mode"] not in MODES:
        raise DataError(folder / SCORER_FILE, f"must be one of {MODES}, got {meta['mode']!r}", "mode", kind="field")
    backbone, tokenizer = load_backbone(folder, meta["mode"])
    model = build_scoring_model(meta["mode"], backbone)
    if isinstance(model, EncoderScorer):
        from trainers.checkpoints import load_state

        head = load_state(folder / HEAD_FILE, "scorer head")
        try:
            model.head.load_state_dict(head)
        except (RuntimeError, TypeError, AttributeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DataError(folder / HEAD_FILE, f"cannot load the scorer's head (not this scorer's weights): {first}") from None
    return model, tokenizer, meta
