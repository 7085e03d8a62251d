"""Which features of an answer carry over to unseen prompts? A diagnostic for the preference judge.

    python3 benchmarks/pair_features.py                 # AlpacaEval dev split, MiniLM, ~11 min on 2 CPUs
    python3 benchmarks/pair_features.py --embeddings emb.npz --json features.json   # embeddings kept for reruns

Every text (prompts and answers of both splits) is embedded once with the sentence encoder
(mean-pooled, L2-normalised, ``--max-length`` tokens). Then one linear model per feature set,
fitted on the training pairs' differences f(a) - f(b) (``trainers.pair.fit_difference_model``,
the length + format rule's own fit, so swapping answers flips it), is scored on validation pairs
(held-out *training* prompts, as pair mode's epoch selection sees them) and on the test split:

- ``length+format``: the judge's side features (the length + format rule);
- ``+relevance``: and each answer's cosine similarity to its prompt;
- ``+answer embedding``: and the answer's embedding (what a judge learns from an answer's content);
- ``+both``.

A feature set that gains on validation and loses on test learned the training prompts, not the
judge. No Ray; no test labels choose anything (each model is fitted once, on the training pairs).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from trainers.data.pairs import PreferencePairs, read_pairs, split_by_prompt  # noqa: E402
from trainers.embed import default_model_dir, embed_texts, load_encoder  # noqa: E402
from trainers.metrics import preference_metrics  # noqa: E402
from trainers.models.pair import prob_from_logit, side_features  # noqa: E402
from trainers.pair import fit_difference_model  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pairs" / "alpaca_eval"
FEATURE_SETS = {"length+format": ("side",), "+relevance": ("side", "relevance"),
                "+answer embedding": ("side", "embedding"), "+both": ("side", "relevance", "embedding")}


def all_texts(*splits: PreferencePairs) -> list[str]:
    return sorted({t for s in splits for t in (*s.prompt, *s.a, *s.b)})


def text_embeddings(texts: list[str], model_dir: str, max_length: int, path: str | None) -> dict[str, np.ndarray]:
    """{text: embedding}; read from ``path`` (an .npz of texts and vectors) when it holds exactly these texts."""
    if path and Path(path).exists():
        saved = np.load(path, allow_pickle=False)
        if list(saved["texts"]) == texts and int(saved["max_length"]) == max_length:
            return dict(zip(texts, saved["vectors"].astype(np.float32)))
    # Kept as float16; rounded so already, so a rerun from the file gives the same table.
    vectors = embed_texts(texts, model_dir, batch_size=32, max_length=max_length,
                          encoder=load_encoder(model_dir)).astype(np.float16).astype(np.float32)
    if path:
        np.savez(path, texts=np.array(texts), vectors=vectors.astype(np.float16), max_length=max_length)
    return dict(zip(texts, vectors))


def per_answer_features(pairs: PreferencePairs, side: str, emb: dict[str, np.ndarray], tokenizer) -> dict[str, np.ndarray]:
    """Each feature group for answer ``side`` ('a' or 'b') of every pair, ``[N, d]``."""
    texts = pairs.a if side == "a" else pairs.b
    counts = np.array([len(ids) for ids in tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]])
    answer = np.stack([emb[t] for t in texts])
    prompt = np.stack([emb[t] for t in pairs.prompt])
    return {"side": side_features(list(texts), counts), "relevance": (answer * prompt).sum(1, keepdims=True),
            "embedding": answer}


def differences(pairs: PreferencePairs, groups: tuple[str, ...], emb, tokenizer) -> torch.Tensor:
    fa, fb = per_answer_features(pairs, "a", emb, tokenizer), per_answer_features(pairs, "b", emb, tokenizer)
    return torch.as_tensor(np.concatenate([fa[g] - fb[g] for g in groups], axis=1))


def compare(train: PreferencePairs, val: PreferencePairs, test: PreferencePairs, emb, tokenizer, l2: float) -> dict:
    rows = {}
    for name, groups in FEATURE_SETS.items():
        predict = fit_difference_model(differences(train, groups, emb, tokenizer), train.p, l2)
        rows[name] = {split: preference_metrics(prob_from_logit(predict(differences(pairs, groups, emb, tokenizer))),
                                                pairs.p, pairs.length_controlled())
                      for split, pairs in (("validation", val), ("test", test))}
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", default=str(DATA / "train.parquet"))
    ap.add_argument("--test", default=str(DATA / "test.parquet"))
    ap.add_argument("--model", default=None, help="sentence encoder folder (default: all-MiniLM-L6-v2 from its package)")
    ap.add_argument("--max-length", type=int, default=128, help="tokens embedded per text")
    ap.add_argument("--val-frac", type=float, default=0.1, help="share of training prompts held out for validation")
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0, help="the validation split")
    ap.add_argument("--embeddings", help="an .npz to keep the embeddings in (read back when its texts match)")
    ap.add_argument("--json", help="write the table here")
    args = ap.parse_args(argv)
    model_dir = args.model or str(default_model_dir())
    pairs, test = read_pairs(args.train), read_pairs(args.test)
    train, val = split_by_prompt(pairs, args.val_frac, args.seed)
    emb = text_embeddings(all_texts(pairs, test), model_dir, args.max_length, args.embeddings)
    rows = compare(train, val, test, emb, load_encoder(model_dir)[0], args.l2)
    print(f"# {len(train)} training pairs, {len(val)} validation pairs (held-out training prompts), {len(test)} test pairs")
    print(f"{'features':<20} {'validation':>10} {'val LC':>8} {'test':>8} {'test LC':>8}")
    for name, r in rows.items():
        print(f"{name:<20} {100 * r['validation']['agreement']:>10.1f} {100 * r['validation']['agreement_lc']:>8.1f} "
              f"{100 * r['test']['agreement']:>8.1f} {100 * r['test']['agreement_lc']:>8.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=float) + "\n")
    return rows


if __name__ == "__main__":
    main()
