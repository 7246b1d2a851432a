"""The project's shape: the core below the Dagster layer, no import circles, thin assets, and a dg project."""

import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tao_dagster import definitions
from tao_dagster.paths import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "tao_dagster"
DAGSTER_LAYER = ("tao_dagster.defs", "tao_dagster.definitions", "tao_dagster.cli")
MAX_ASSET_BODY_LINES = 40


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Each module of the package -> the modules it imports, at the top or inside functions."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
        graph[module_name(path)] = found
    return graph


def in_dagster_layer(module: str) -> bool:
    return module.startswith(DAGSTER_LAYER)


def test_the_core_imports_neither_dagster_nor_the_dagster_layer():
    offending = {
        module: sorted(m for m in imported if m.split(".")[0] in ("dagster", "dagster_aws") or in_dagster_layer(m))
        for module, imported in imports().items()
        if not in_dagster_layer(module)
    }
    assert {m: i for m, i in offending.items() if i} == {}


def test_no_import_circle_among_the_package_modules():
    graph = imports()
    local = {m: {i for i in imported if i in graph} for m, imported in graph.items()}

    def reaches(start: str, seen: list[str]) -> list[str] | None:
        for nxt in local[start]:
            if nxt == seen[0]:
                return [*seen, nxt]
            if nxt not in seen and (path := reaches(nxt, [*seen, nxt])):
                return path
        return None

    # A package's __init__ importing its own submodules is how it exports them, not a circle.
    circles = [c for m in local if (c := reaches(m, [m])) and not any(a.startswith(b + ".") for a, b in zip(c[1:], c))]
    assert circles == []


def test_every_asset_body_is_short():
    defs = definitions.defs()
    long = {}
    for node in [*defs.assets, *defs.asset_checks]:
        fn = node.op.compute_fn.decorated_fn
        fn = inspect.unwrap(fn)
        lines, _ = inspect.getsourcelines(fn)
        body = len(lines) - next(i for i, line in enumerate(lines) if line.rstrip().endswith(":") and ")" in line) - 1
        if body > MAX_ASSET_BODY_LINES:
            long[fn.__name__] = body
    assert long == {}


@pytest.mark.parametrize("command", [["check", "defs"], ["list", "defs"]])
def test_dg_loads_the_project(command):
    """`dg check defs` and `dg list defs`, as a Dagster user runs them in the project's environment."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "VIRTUAL_ENV": str(bin_dir.parent), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run([str(bin_dir / "dg"), *command], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    if command[0] == "list":
        for name in ("raw_prompts", "candidate_responses", "reward_scores", "tuned_checkpoint", "eval_report", "new_log_files"):
            assert name in result.stdout


def test_importing_the_code_location_changes_no_environment():
    """Dagster calls the code location's function when it loads it; importing the module sets nothing."""
    check = "import os; before = dict(os.environ); import tao_dagster.definitions; assert dict(os.environ) == before, 'changed'"
    env = {name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ}  # nothing this process was given
    result = subprocess.run([sys.executable, "-c", check], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
