"""The import graph: no cycles anywhere, imports only down the layers (LAYERS), and installed names that cannot
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


# The layers, lowest first. A module may import modules of its own layer and of the layers below it, never above:
# foundations know nothing of recipes; the core reads recipes, models, data and run directories; reward models
# are built on the core; stages (and what only they and the commands use) on reward models; commands and the web
# app on top. A module's layer is that of its longest listed prefix; a new module must be placed here.
LAYERS = [
    ("foundations", ["align", "align.formats", "align.judges", "align.labelling", "align.labelling.accounts",
                     "align.labelling.stats", "align.labelling.store", "align.library_noise", "align.resources",
                     "align.child_processes", "align.run_lock", "align.sharding", "align.reward_functions",
                     "align.stages"]),  # align.stages: the stage table alone, read by the recipe schema
    ("core", ["align.config", "align.data", "align.models", "align.runs", "align.generation",
              "align.trainer_settings", "align.trainers"]),
    ("reward models", ["align.reward"]),
    ("stages", ["align.stages.", "align.onpolicy", "align.labeller", "align.eval_metrics", "align.vllm_sampling",
                "align.gguf_export", "align.labelling.sources", "align.report"]),
    ("commands", ["align.pipeline", "align.chat", "align.compare_models", "align.cli", "align.__main__"]),
    ("web app", ["align.ui"]),
]
# The one way up: `align label` / `align feedback` start the web app by name.
UPWARD_ALLOWED = {("align.cli", "align.ui"), ("align.cli", "align.ui.serve")}


def layer_of(module: str) -> int:
    matches = [(len(prefix), rank) for rank, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix if prefix.endswith(".") else prefix + ".")]
    assert matches, f"{module}: in no layer; add it to LAYERS in tests/test_imports.py"
    return max(matches)[1]


def test_the_layer_of_a_module_is_its_longest_prefix():
    assert LAYERS[layer_of("align.stages")][0] == "foundations"
    assert LAYERS[layer_of("align.stages.ppo.steps")][0] == "stages"
    assert LAYERS[layer_of("align.reward.scoring")][0] == "reward models"
    assert LAYERS[layer_of("align.labelling.sources")][0] == "stages"
    assert LAYERS[layer_of("align.labelling.store")][0] == "foundations"


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
                  for module, reached in edges.items() for target in reached
                  if layer_of(target) > layer_of(module) and (module, target) not in UPWARD_ALLOWED)


def test_the_layer_rule_catches_an_upward_import():
    assert upward_imports({"align.models": {"align.reward.model"}, "align.reward": {"align.models"}}) == [
        "align.models (core) imports align.reward.model (reward models)"]
    assert upward_imports({"align.cli": {"align.ui.serve"}}) == []


def test_every_import_goes_down_the_layers():
    upward = upward_imports(graph())
    assert not upward, "\n".join(upward)


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


def test_every_package_folder_is_in_the_wheel():
    """pyproject.toml lists the packages by hand (reward/, ui/ and recipes/ install under align.): a folder left off
    the list is missing from a user's install, while an editable one still finds it."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join((package, *init.parent.relative_to(REPO / folder).parts))
             for folder, package in {**INSTALLED_AS, "recipes": "align.recipes"}.items()
             for init in (REPO / folder).rglob("__init__.py")}
    assert found == listed, f"in the tree, not in pyproject.toml: {sorted(found - listed)}; " \
                            f"listed, not in the tree: {sorted(listed - found)}"
