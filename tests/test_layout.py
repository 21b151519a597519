"""The layout rules: folders are processes, and each side loads only what it runs.

Each check imports in a fresh interpreter, as the process in question would start.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {
    "servegraph": ROOT / "runtime",
    "servegraph.workers": ROOT / "workers",
    "servegraph.clients": ROOT / "clients",
}

ROUTER_SIDE = ("servegraph.dsl", "servegraph.engine", "servegraph.hosting", "servegraph.serving", "servegraph.cli")


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running `code`."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def offenders(modules: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden))


def test_the_worker_loads_nothing_of_the_router():
    modules = loaded_after("import servegraph.workers.worker")
    forbidden = (*ROUTER_SIDE, "prometheus_client", "grpc_reflection.v1alpha", "yaml")
    assert offenders(modules, forbidden) == []


def test_the_clients_load_nothing_of_the_router():
    modules = loaded_after("import servegraph.clients")
    forbidden = (*ROUTER_SIDE, "servegraph.workers", "servegraph.models", "prometheus_client", "uvloop", "yaml")
    assert offenders(modules, forbidden) == []


def test_importing_servegraph_and_building_a_graph_imports_no_grpc():
    modules = loaded_after(
        "import servegraph as sg\n"
        "graph = sg.Graph('g')\n"
        "graph.add_shared_model('llm', 'LLModel', 'dedicated_process')\n"
        "runner = sg.ModelRunnerStep(name='models')\n"
        "runner.add_model('m', sg.Model, execution_mechanism='naive')\n"
        "runner.add_shared_model_proxy('p', shared_model_name='llm')\n"
        "graph.to(name='first', handler='json.dumps').to(runner).respond()\n"
        "graph.validate(); graph.to_yaml(); graph.plot()"
    )
    assert offenders(modules, ("grpc", "servegraph.engine", "servegraph.serving", "servegraph.hosting")) == []


def _module_name(path: Path) -> str:
    for package, folder in FOLDERS.items():
        if folder in path.parents:
            parts = [*package.split("."), *path.relative_to(folder).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise AssertionError(path)


def _imports_at_load(path: Path, module: str) -> set[str]:
    """servegraph modules imported when `module` loads (not under TYPE_CHECKING, not inside functions)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("servegraph")}


def test_no_import_cycles_between_modules():
    files = {
        _module_name(path): path
        for folder in FOLDERS.values()
        for path in folder.rglob("*.py")
        if "v1" not in path.relative_to(ROOT).parts
    }
    edges = {
        module: {m for m in _imports_at_load(path, module) if m in files and m != module}
        for module, path in files.items()
    }
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1 and not module.startswith(target + "."):
                pytest.fail(f"import cycle: {' -> '.join([*trail[trail.index(target) :], target])}")
            if target not in state:
                visit(target, [*trail, target])
        state[module] = 2

    for module in sorted(files):
        if module not in state:
            visit(module, [module])


def test_the_router_never_imports_the_worker_package():
    for path in (ROOT / "runtime").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(name.startswith("servegraph.workers") for name in names), path
