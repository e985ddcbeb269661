"""The import graph: no cycles anywhere, the direction ui -> align -> reward, and installed names that cannot
collide (reward/ and ui/ are align.reward and align.ui). Read from the source, so function-level imports count."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# folder -> the package name it installs as (pyproject.toml's package-dir)
INSTALLED_AS = {"align": "align", "reward": "align.reward", "ui": "align.ui"}


def module_files() -> dict[str, Path]:
    modules = {}
    for folder, package in INSTALLED_AS.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            modules[".".join((package, *parts))] = path
    return modules


def imported_names(path: Path, module: str) -> set[str]:
    """Every module name an import statement in the file reaches, anywhere in the file; `from a import b` counts
    as a.b when that is a module, else as a; relative imports are resolved; dynamic import_module("x") counts."""
    names = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant):
                names.add(node.args[0].value)
    return names


def graph() -> dict[str, set[str]]:
    modules = module_files()
    edges = {}
    for module, path in modules.items():
        reached = set()
        for name in imported_names(path, module):
            parts = name.split(".")
            # importing a.b.c runs a/__init__ and a/b/__init__ too
            reached.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        edges[module] = {m for m in reached if m in modules and m != module and not module.startswith(m + ".")}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_anywhere():
    assert cycles(graph()) == []


def test_import_direction_is_ui_then_align_then_reward():
    edges = graph()
    for module, reached in edges.items():
        if module.startswith("align.reward"):
            assert all(m.startswith("align.reward") for m in reached if m != "align"), (module, reached)
        elif not module.startswith("align.ui"):
            # the one way in: `align label` / `align arena` start the app by name
            allowed = {"align.ui", "align.ui.serve"} if module == "align.cli" else set()
            assert not {m for m in reached if m.startswith("align.ui")} - allowed, module


def test_nothing_imports_the_folders_by_their_generic_names_or_gradio_outside_ui():
    for folder in ("align", "reward", "ui", "bench", "scripts"):
        for path in (REPO / folder).rglob("*.py"):
            names = imported_names(path, "x")
            top = {name.split(".")[0] for name in names}
            assert not top & {"reward", "ui", "tests"}, f"{path}: imports {sorted(top & {'reward', 'ui', 'tests'})}"
            if folder != "ui":
                assert "gradio" not in top and "gradio_client" not in top or folder == "bench", path


def test_the_installed_names_are_the_folders():
    import align.recipes
    import align.reward
    import align.ui

    assert Path(align.reward.__file__).parent == REPO / "reward"
    assert Path(align.ui.__file__).parent == REPO / "ui"
    assert Path(align.recipes.__file__).parent == REPO / "recipes"
