"""The judges that read both answers of a pair, by ``--mode``: ``pair`` (top layers over cached
lower-layer states, ``trainers/pair.py``) and ``cross`` (a full cross-encoder, ``trainers/cross.py``).
They share pair mode's run machinery; this is the one place a mode name becomes a judge."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from trainers.cross import build_cross_model, save_cross_scorer
from trainers.pair import build_pair_model, save_pair_scorer


@dataclass(frozen=True)
class JudgeKind:
    build: Callable  # (DPOConfig) -> the judge model (PairModel's interface)
    save: Callable  # (folder, DPOConfig, best state, scorer meta) -> None


JUDGES = {"pair": JudgeKind(build_pair_model, save_pair_scorer), "cross": JudgeKind(build_cross_model, save_cross_scorer)}
