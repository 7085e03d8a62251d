"""Side features of an answer's form: the things an LLM judge visibly rewards (length, lists,
headings, code, structure) and the things it punishes (refusals, repetition, a cut-off end).

The preference heads get them next to the pooled text embedding, because a mean-pooled sentence
embedding keeps what a text is about and loses most of how long and how structured it is. Every
count is ``log1p``-squashed so that one 60,000-token answer does not dominate a batch.

    feats = answer_features(texts)                  # [N, len(ANSWER_FEATURES)] float32
    pair = pair_features(feats_a, feats_b)          # [N, len(PAIR_FEATURES)]: a - b, antisymmetric
"""
from __future__ import annotations

import re

import numpy as np

_LIST_ITEM = re.compile(r"^\s*(?:[-*\u2022+]|\d{1,3}[.)])\s+\S", re.M)
_NUMBERED_ITEM = re.compile(r"^\s*\d{1,3}[.)]\s+\S", re.M)
# Markdown headings, whole-line bold, and short plain-text section labels ("Ingredients:").
_HEADING = re.compile(r"^\s*(?:#{1,6}\s+\S.*|\*\*[^*\n]{2,80}\*\*:?\s*|[A-Z][\w ,/&'()-]{0,40}:\s*)$", re.M)
_CODE_FENCE = re.compile(r"^\s*```", re.M)
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_BOLD = re.compile(r"\*\*[^*\n]+\*\*")
_URL = re.compile(r"https?://\S+")
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
_WORD = re.compile(r"\w+", re.U)
# Phrases of refusals and disclaimers: GPT-4 judges rarely prefer an answer that declines.
_REFUSAL = re.compile(r"\b(?:I'?m sorry|I apologi[sz]e|as an AI|I cannot|I can'?t|I am unable|I'?m unable|"
                      r"language model|I do not have|I don'?t have)\b", re.I)

ANSWER_FEATURES = (
    "log_chars", "log_tokens", "log_words", "log_lines", "log_blank_lines", "log_list_items",
    "log_numbered_items", "log_headings", "log_code_blocks", "log_inline_code", "log_bold", "log_urls",
    "log_sentences", "mean_word_chars", "mean_sentence_words", "unique_word_share", "repeated_line_share",
    "digit_share", "upper_share", "non_ascii_share", "refusal", "ends_cleanly", "prompt_word_overlap",
)
PAIR_FEATURES = tuple(f"diff_{name}" for name in ANSWER_FEATURES)


def _counts(text: str) -> dict[str, float]:
    """Raw structure counts of one text."""
    lines = text.split("\n")
    stripped = [line.strip() for line in lines if line.strip()]
    words = _WORD.findall(text)
    sentences = max(len(_SENTENCE_END.findall(text)), 1)
    return {
        "chars": len(text), "words": len(words), "lines": len(stripped),
        "blank_lines": sum(1 for line in lines if not line.strip()),
        "list_items": len(_LIST_ITEM.findall(text)), "numbered_items": len(_NUMBERED_ITEM.findall(text)),
        "headings": len(_HEADING.findall(text)), "code_blocks": len(_CODE_FENCE.findall(text)) // 2 + len(_CODE_FENCE.findall(text)) % 2,
        "inline_code": len(_INLINE_CODE.findall(text)), "bold": len(_BOLD.findall(text)), "urls": len(_URL.findall(text)),
        "sentences": sentences,
        "mean_word_chars": float(np.mean([len(w) for w in words])) if words else 0.0,
        "mean_sentence_words": len(words) / sentences,
        "unique_word_share": len({w.lower() for w in words}) / max(len(words), 1),
        # Degenerate generations repeat whole lines; a judge punishes that.
        "repeated_line_share": 1.0 - len(set(stripped)) / max(len(stripped), 1),
    }


def _shares(text: str) -> dict[str, float]:
    n = max(len(text), 1)
    tail = text.rstrip()[-1:]
    return {
        "digit_share": sum(c.isdigit() for c in text) / n,
        "upper_share": sum(c.isupper() for c in text) / n,
        "non_ascii_share": sum(ord(c) > 127 for c in text) / n,
        "refusal": float(bool(_REFUSAL.search(text[:400]))),
        # An answer cut off mid-sentence (max_new_tokens ran out) ends without punctuation.
        "ends_cleanly": float(tail in ".!?)]}\"'`*:" or tail.isdigit()),
    }


def _prompt_overlap(prompt: str, text: str) -> float:
    """Share of the prompt's distinct words that the answer uses: a crude on-topic signal."""
    asked = {w.lower() for w in _WORD.findall(prompt) if len(w) > 3}
    if not asked:
        return 0.0
    said = {w.lower() for w in _WORD.findall(text)}
    return len(asked & said) / len(asked)


def answer_features(texts: list[str], n_tokens=None, prompts: list[str] | None = None) -> np.ndarray:
    """[N, len(ANSWER_FEATURES)] float32. ``n_tokens``: each text's tokenizer length (before any
    truncation); without it, words stand in. ``prompts``: the instruction each text answers."""
    rows = []
    for i, text in enumerate(texts):
        c, s = _counts(text), _shares(text)
        tokens = float(n_tokens[i]) if n_tokens is not None else float(c["words"])
        overlap = _prompt_overlap(prompts[i], text) if prompts is not None else 0.0
        rows.append([np.log1p(c["chars"]), np.log1p(tokens), np.log1p(c["words"]), np.log1p(c["lines"]),
                     np.log1p(c["blank_lines"]), np.log1p(c["list_items"]), np.log1p(c["numbered_items"]),
                     np.log1p(c["headings"]), np.log1p(c["code_blocks"]), np.log1p(c["inline_code"]),
                     np.log1p(c["bold"]), np.log1p(c["urls"]), np.log1p(c["sentences"]), c["mean_word_chars"],
                     c["mean_sentence_words"], c["unique_word_share"], c["repeated_line_share"], s["digit_share"],
                     s["upper_share"], s["non_ascii_share"], s["refusal"], s["ends_cleanly"], overlap])
    return np.asarray(rows, dtype=np.float32).reshape(len(texts), len(ANSWER_FEATURES))


def pair_features(features_a: np.ndarray, features_b: np.ndarray) -> np.ndarray:
    """a - b per feature; the first is the log length ratio. Swapping a and b negates it exactly."""
    return (np.asarray(features_a, np.float32) - np.asarray(features_b, np.float32)).astype(np.float32)


def format_rule_features(features_a: np.ndarray, features_b: np.ndarray) -> np.ndarray:
    """The issue's "length + format" baseline inputs: log length ratio and the differences in
    newline, list-item and code-block counts (log1p-squashed)."""
    names = ("log_chars", "log_lines", "log_list_items", "log_code_blocks")
    index = [ANSWER_FEATURES.index(n) for n in names]
    return pair_features(features_a[:, index], features_b[:, index])
