"""Shared by the pair-reading judges' tests (pair and cross modes)."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from search.cli import main


def score_pairs_both_orders(scorer, pairs, folder) -> tuple[np.ndarray, np.ndarray]:
    """``lossforge score-pairs`` on ``pairs`` and on the same pairs with the answers swapped:
    (P(a better), P(a better) of the swapped file), both read back from the written Parquet."""
    pq.write_table(pairs.to_table(), folder / "test.parquet")
    swapped = pairs.to_table().rename_columns(["prompt", "output_b", "output_a", "label"])
    swapped = pa.table({"prompt": swapped["prompt"], "output_a": swapped["output_a"], "output_b": swapped["output_b"]})
    pq.write_table(swapped, folder / "swapped.parquet")
    for name in ("test", "swapped"):
        assert main(["score-pairs", "--model", str(scorer), "--data", str(folder / f"{name}.parquet"),
                     "--out", str(folder / f"{name}_scored.parquet")]) == 0
    return tuple(pq.read_table(folder / f"{name}_scored.parquet")["p_a_model"].to_numpy() for name in ("test", "swapped"))
