"""Imports run one way: losses/models/data <- recipes <- loop <- search; only the loop and search import Ray."""
import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAY_ALLOWED = {"trainers/loop.py"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_trainers_never_import_search_and_only_the_loop_imports_ray():
    for path in sorted((REPO / "trainers").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        modules = imported_modules(path)
        assert not any(m == "search" or m.startswith("search.") for m in modules), rel
        if rel not in RAY_ALLOWED:
            assert not any(m == "ray" or m.startswith("ray.") for m in modules), rel


def test_losses_models_and_recipes_import_without_ray():
    code = ("import sys, trainers.pu, trainers.losses.taylor, trainers.losses.pu, trainers.losses.seeds, "
            "trainers.models.mlp, trainers.data.shards, trainers.metrics, search.cli, "
            "trainers.dpo, trainers.scorer, trainers.losses.preference, trainers.losses.preference_taylor, "
            "trainers.models.preference, trainers.data.pairs; "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_lower_layers_do_not_import_the_recipe():
    for folder in ("losses", "models", "data"):
        for path in (REPO / "trainers" / folder).rglob("*.py"):
            modules = imported_modules(path)
            assert not modules & {"trainers.pu", "trainers.dpo", "trainers.loop", "trainers.scorer"}, path


def test_every_module_and_every_name_it_imports_from_the_project_exist():
    """A module only the slow tests import (a Ray job) must not hide a broken import until then."""
    modules = sorted(p.relative_to(REPO).with_suffix("").as_posix().replace("/", ".")
                     for folder in ("trainers", "search") for p in (REPO / folder).rglob("*.py"))
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    subprocess.run([sys.executable, "-c", code, *modules], cwd=REPO, check=True)
