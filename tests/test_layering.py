"""The house's shape: imports go one way, and the driver, config and CLI read as short functions."""

import ast
from pathlib import Path

import pytest

from agentworld.envs.swe import parse  # ast.parse, retried past CPython 3.11's spurious SystemError

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports too)."""
    out = set()
    for node in ast.walk(parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_learners_import_nothing_from_actors():
    for f in (ROOT / "learners").glob("*.py"):
        assert not [m for m in imported_modules(f) if m.split(".")[0] == "actors"], f


def test_config_imports_no_learner_worldmodel_or_controls():
    bad = [m for m in imported_modules(ROOT / "agentworld" / "config.py")
           if m.startswith(("learners", "agentworld.worldmodel", "agentworld.controls"))]
    assert not bad


def test_engine_interface_does_not_import_its_engines():
    mods = imported_modules(ROOT / "agentworld" / "models" / "engine.py")
    assert not [m for m in mods if "hf_engine" in m or "vllm_engine" in m]


def test_cli_starts_ray_through_a_public_function():
    mods = imported_modules(ROOT / "agentworld" / "cli.py")
    assert not [m for m in mods if m.split(".")[-1].startswith("_") and m.startswith("agentworld.driver")]
    assert "agentworld.cluster.start_ray" in mods


@pytest.mark.parametrize("name", ["agentworld/driver.py", "agentworld/config.py", "agentworld/cli.py"])
def test_no_function_is_longer_than_60_lines(name):
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(parse((ROOT / name).read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60]
    assert not long


def test_no_file_cites_a_document_outside_the_repo():
    for f in [*ROOT.glob("agentworld/**/*.py"), *ROOT.glob("actors/*.py"), *ROOT.glob("learners/*.py")]:
        assert "ARCHITECTURE.md" not in f.read_text() and "../shared" not in f.read_text(), f
