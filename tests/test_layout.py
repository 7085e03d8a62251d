"""Imports run one way: losses/models/data <- recipes <- loop <- search; only the loop and search import Ray."""
import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAY_ALLOWED = {"trainers/loop.py"}


def imported_names(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names taken from it) for every import in the file, at any depth: an import
    inside a function counts as much as one at the top. Relative imports are resolved."""
    package = path.relative_to(REPO).with_suffix("").parts[:-1] if path.is_relative_to(REPO) else ()
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.append((module, [a.name for a in node.names]))
    return found


def imported_modules(path: Path) -> set[str]:
    return {module for module, _ in imported_names(path)}


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


def project_modules() -> dict[str, Path]:
    """Every module of search/ and trainers/ by dotted name (a package by its own name)."""
    modules = {}
    for folder in ("search", "trainers"):
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its text (inside functions too: a
    deferred import is still a dependency), with ``from package import module`` resolved."""
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for module, names in imported_names(path):
            for candidate in [module] + [f"{module}.{n}" for n in names]:
                if candidate in modules and candidate != name:
                    targets.add(candidate)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [node])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found[found.index(found[-1]):]
    return None


def test_no_import_cycle_in_search_or_trainers_counting_imports_inside_functions():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_sees_an_import_inside_a_function(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("import b\n")
    b.write_text("def f():\n    from a import x\n")
    graph = {name: {m for m, _ in imported_names(p)} for name, p in (("a", a), ("b", b))}
    assert find_cycle(graph) == ["a", "b", "a"]


def test_only_the_command_line_resolves_a_task_and_generic_modules_never_import_one():
    """The task is named once (the CLI), then passed down as an object: the driver, trial,
    searcher, report and re-evaluation work for any task."""
    allowed = {"search/cli.py"}
    for path in sorted((REPO / "search").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel in allowed or rel.startswith("search/tasks/"):
            continue
        modules = imported_modules(path)
        assert not any(m == "search.tasks" or m.startswith("search.tasks.") for m in modules), rel
        assert "get_task" not in path.read_text(), rel
