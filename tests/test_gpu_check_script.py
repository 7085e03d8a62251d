"""benchmarks/gpu_search_check.py is run only where a GPU is lent, so a break in it (session 31's first
device call failed at once on a search name with spaces) costs device time that cannot be bought back.
``--smoke`` runs the whole script tiny on this CPU machine: both searches on a cluster advertising a
GPU it does not have, then the cross-encoder recipe on the built-in pairs and tiny model."""
import re
import sys
from pathlib import Path

import pytest
from raycluster import run_while_progressing

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_script_smoke_runs_every_part_on_a_cpu_machine(tmp_path):
    # Bounded by progress, not a fixed time: the script prints a line per search and per epoch.
    code = run_while_progressing([sys.executable, str(ROOT / "benchmarks" / "gpu_search_check.py"), "--smoke"],
                                 ROOT, tmp_path / "smoke.log", 300)
    out = (tmp_path / "smoke.log").read_text()
    assert code == 0, out[-6000:]
    assert "device: CPU (--smoke)" in out
    assert re.search(r"packs-on-quarter-gpus .* ok 4/4", out), out
    assert re.search(r"one-train-job-per-candidate .* ok 2/2", out), out
    assert re.search(r"ratio c/b=\d+\.\d", out), out
    assert "cross recipe: built-in synthetic pairs, model built-in tiny" in out
    agreements = [float(a) for a in re.findall(r"test\s+agreement (\d\.\d+)", out)]
    assert len(agreements) == 1 and 0.0 <= agreements[0] <= 1.0, out
