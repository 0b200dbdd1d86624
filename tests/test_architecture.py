"""Issue 13: layers import one way (ir <- passes <- backends <- pipeline <- commands), and the generated
diagram in docs/architecture.md matches the code."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from architecture_diagram import DOC, refreshed  # noqa: E402

# package -> hwact packages/modules it must never import
FORBIDDEN = {
    "ir": ("hwact.passes", "hwact.backends", "hwact.targets", "hwact.pipeline", "hwact.commands", "hwact.load"),
    "passes": ("hwact.backends", "hwact.targets", "hwact.pipeline", "hwact.commands"),
    "backends": ("hwact.passes", "hwact.pipeline", "hwact.commands"),
    "targets": ("hwact.passes", "hwact.backends", "hwact.pipeline", "hwact.commands"),
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_import_one_way(package):
    offenders = [f"{path.relative_to(ROOT)} imports {name}"
                 for path in sorted((ROOT / "hwact" / package).glob("*.py"))
                 for name in imported_modules(path) if name.startswith(FORBIDDEN[package])]
    assert offenders == []


def test_architecture_diagram_is_current():
    assert DOC.read_text() == refreshed(DOC.read_text()), "run: python scripts/architecture_diagram.py --write"


def test_every_pass_declares_exactly_the_options_its_constructor_takes():
    import inspect

    from hwact.passes.base import all_passes

    for name, cls in all_passes().items():
        parameters = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}  # object's
        assert set(cls.takes) == parameters, name


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("bench_*.py")))
def test_benchmark_scripts_import(script):
    """The scripts behind BENCHMARKS.md follow the package's moves (a stale import failed two of them)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(script[:-3], ROOT / "benchmarks" / script)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
