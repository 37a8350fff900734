"""Dependencies point down: no import circle inside ``shared/``, settings only read
configuration, and the kernel imports neither the recipes, the services, the coordinator nor the
CLI (the recipe contract is kernel code: ``shared/recipe.py``).

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a circle
hidden in a function body is still a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def import_graph(package: str) -> dict[str, set[str]]:
    modules = {module_name(path): path for path in (ROOT / package).rglob("*.py")}
    return {
        name: {imported for imported in imports_of(path) if imported in modules} - {name}
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return [*visiting[visiting.index(node) :], node]
        if node in done:
            return None
        visiting.append(node)
        for target in sorted(graph[node]):
            cycle = visit(target)
            if cycle:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_inside_shared() -> None:
    assert find_cycle(import_graph("shared")) is None


def test_settings_only_read_configuration() -> None:
    """Adapters are wired in shared/bootstrap.py; settings import no adapter module."""
    imported = imports_of(ROOT / "shared" / "settings.py")
    adapters = ("shared.bus", "shared.blobs", "shared.tracking", "shared.bootstrap")
    assert not {name for name in imported if name.startswith(adapters)}


@pytest.mark.parametrize("upper", ["recipes", "services", "coordinator", "cli"])
def test_the_kernel_does_not_import_the_layers_above_it(upper: str) -> None:
    offenders = {
        module_name(path): sorted(name for name in imports_of(path) if name.split(".")[0] == upper)
        for path in (ROOT / "shared").rglob("*.py")
    }
    assert {module: names for module, names in offenders.items() if names} == {}


def test_no_service_imports_the_cli() -> None:
    for package in ("shared", "services", "coordinator", "recipes"):
        for path in (ROOT / package).rglob("*.py"):
            assert not any(name.split(".")[0] == "cli" for name in imports_of(path)), path


@pytest.mark.parametrize("package", ["services", "coordinator", "cli"])
def test_services_reach_recipes_only_through_the_registry(package: str) -> None:
    """Bundled recipes are found by entry point; no service imports one directly."""
    for path in (ROOT / package).rglob("*.py"):
        assert not any(name.split(".")[0] == "recipes" for name in imports_of(path)), path
