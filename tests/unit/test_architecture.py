"""The package's architecture, read from its source: import direction, no cycles, module size.

Every module of ``tokenrelay`` and of ``bench`` is parsed with :mod:`ast` (nothing is imported), and every
import statement is collected: at module level, inside functions and under ``if TYPE_CHECKING:`` alike, since
each of them can close a cycle or break a layer.  Relative imports are resolved against the importing module's
package, and ``from package import submodule`` counts as an import of the submodule.  An import statement is an
edge to the module it names only: the parent packages Python initialises on the way are not edges, or every
package whose ``__init__`` re-exports its submodules would count as a cycle.
"""

from __future__ import annotations

import ast
import functools
import itertools
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
PACKAGE = "tokenrelay"
BENCH = "bench"
TESTS = "tests"
MAX_MODULE_LINES = 500
"""A module longer than this is asking to be split (one concept per module)."""

EVERYTHING = "*"
"""Stands in the rules for "may import any part of tokenrelay"."""

ALLOWED_IMPORTS: Mapping[str, frozenset[str]] = {
    "": frozenset(),  # the root package's __init__: what every import of tokenrelay runs first
    "wire": frozenset({"wire"}),
    "runtime": frozenset({"wire", "runtime"}),
    "gateway": frozenset({"wire", "runtime", "gateway"}),
    "runner": frozenset({"wire", "runtime", "runner"}),
    "streamer": frozenset({"wire", "runtime", "streamer"}),
    "client": frozenset({"wire", "client"}),
    "loadtest": frozenset({"wire", "runtime", "client", "loadtest"}),
    "cli": frozenset({EVERYTHING}),
    "testing": frozenset({EVERYTHING}),
    "__main__": frozenset({EVERYTHING}),
}
"""For each part of tokenrelay (its second name: ``tokenrelay.<part>``), the parts it may import.

The root package (part ``""``) holds only a docstring and the version, so any part may import it.
"""

ROLES = ("gateway", "runner", "streamer")


@dataclass(frozen=True, slots=True)
class Import:
    """One module named by one import statement."""

    importer: str
    target: str
    path: str
    line: int
    statement: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.statement}"


@dataclass(frozen=True, slots=True)
class SourceModule:
    """A module found on disk: its dotted name, its file, and whether it is a package's ``__init__``."""

    name: str
    path: Path
    is_package: bool


def find_modules(top: str) -> dict[str, SourceModule]:
    """Every module of the top-level package ``top`` in the repository, by dotted name."""
    modules: dict[str, SourceModule] = {}
    for path in sorted((REPOSITORY / top).rglob("*.py")):
        parts = path.relative_to(REPOSITORY).with_suffix("").parts
        if any(part.startswith(".") for part in parts):
            continue  # a hidden folder is no module of ours (a benchmark's own venv for a peer, under bench/.venvs)
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules[name] = SourceModule(name=name, path=path, is_package=is_package)
    return modules


def resolve_from(importer: str, *, is_package: bool, level: int, module: str | None) -> str:
    """The absolute name of a ``from ... import`` statement's module (``level`` dots before ``module``)."""
    if level == 0:
        return module or ""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    if level - 1 > len(package) - 1:
        raise ValueError(f"{importer}: relative import beyond the top-level package (level {level})")
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, module] if module else base)


def imports_of(
    importer: str, source: str, *, is_package: bool, known: Iterable[str], path: str = "<source>"
) -> list[Import]:
    """Every import in ``source`` (functions and ``TYPE_CHECKING`` blocks included), resolved to module names.

    ``from package import name`` names the submodule ``package.name`` when ``known`` has it, else ``package``.
    """
    known_names = frozenset(known)
    found: list[Import] = []
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve_from(importer, is_package=is_package, level=node.level, module=node.module)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known_names else base for alias in node.names
            ]
        else:
            continue
        statement = ast.unparse(node)
        for target in dict.fromkeys(targets):
            found.append(Import(importer, target, path, node.lineno, statement))
    return sorted(found, key=lambda item: item.line)


@functools.cache
def all_imports() -> tuple[Import, ...]:
    """The imports of every module of tokenrelay and of bench."""
    modules = find_modules(PACKAGE) | find_modules(BENCH)
    found: list[Import] = []
    for module in modules.values():
        relative = str(module.path.relative_to(REPOSITORY))
        source = module.path.read_text(encoding="utf-8")
        found += imports_of(module.name, source, is_package=module.is_package, known=modules, path=relative)
    return tuple(found)


def top_of(module: str) -> str:
    """The top-level package a module belongs to."""
    return module.split(".", maxsplit=1)[0]


def part_of(module: str) -> str:
    """The part of tokenrelay a module belongs to: ``tokenrelay.<part>...`` (``""`` for the root package)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def describe(imports: Iterable[Import]) -> str:
    """One import per line, for a failure message."""
    return "\n".join(f"  {item.importer} -> {item.target}\n    {item}" for item in imports)


def strongly_connected(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` (each node's list of successors)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def shortest_cycle(graph: Mapping[str, Sequence[str]], start: str, within: set[str]) -> list[str]:
    """The shortest path from ``start`` back to itself through nodes of ``within``: ``[start, ..., start]``."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for successor in graph.get(node, ()):
            if successor == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if successor in within and successor not in came_from:
                came_from[successor] = node
                queue.append(successor)
    raise ValueError(f"{start} is on no cycle within {sorted(within)}")


def import_cycles(imports: Iterable[Import]) -> Iterator[list[Import]]:
    """One cycle of imports for each group of modules that import each other (imports of oneself aside)."""
    edges: dict[tuple[str, str], list[Import]] = {}
    for item in imports:
        if item.importer != item.target:
            edges.setdefault((item.importer, item.target), []).append(item)
    graph: dict[str, list[str]] = {}
    for importer, target in edges:
        graph.setdefault(importer, []).append(target)
    for component in strongly_connected(graph):
        if len(component) > 1:
            path = shortest_cycle(graph, component[0], set(component))
            yield [edges[step][0] for step in itertools.pairwise(path)]


def layer_violations(part: str) -> list[Import]:
    """Imports by modules of ``tokenrelay.<part>`` of parts of tokenrelay its rule does not allow."""
    allowed = ALLOWED_IMPORTS[part]
    return [
        item
        for item in all_imports()
        if top_of(item.importer) == PACKAGE
        and part_of(item.importer) == part
        and top_of(item.target) == PACKAGE
        and EVERYTHING not in allowed
        and part_of(item.target) not in allowed | {"", part}
    ]


def assert_part_imports_only_what_it_may(part: str) -> None:
    """Fail with every import by ``tokenrelay.<part>`` that its rule does not allow."""
    assert any(part_of(item.importer) == part for item in all_imports() if top_of(item.importer) == PACKAGE), (
        f"found no imports in tokenrelay.{part}: is the module walk broken?"
    )
    violations = layer_violations(part)
    allowed = ", ".join(sorted(ALLOWED_IMPORTS[part]))
    assert not violations, f"tokenrelay.{part} may import only tokenrelay's {allowed}; it imports:\n" + describe(
        violations
    )


# The walker itself: if it saw nothing, every rule below would pass without looking.


def test_the_import_walker_sees_imports_in_functions_and_under_type_checking() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import tokenrelay.wire.codec\n"
        "if TYPE_CHECKING:\n"
        "    from tokenrelay.runtime.config import RunnerConfig\n"
        "def build() -> None:\n"
        "    from tokenrelay.gateway import app\n"
    )
    known = {"tokenrelay.wire.codec", "tokenrelay.runtime.config", "tokenrelay.gateway", "tokenrelay.gateway.app"}
    found = imports_of("tokenrelay.cli.main", source, is_package=False, known=known)
    assert [(item.target, item.line) for item in found] == [
        ("typing", 1),
        ("tokenrelay.wire.codec", 2),
        ("tokenrelay.runtime.config", 4),
        ("tokenrelay.gateway.app", 6),
    ]


def test_the_import_walker_resolves_relative_imports_against_the_importers_package() -> None:
    known = {"tokenrelay.runner.engines.base", "tokenrelay.runner.generation", "tokenrelay.wire"}
    module = "from .base import Engine\nfrom ..generation import run\nfrom ... import wire\n"
    package = "from . import base\nfrom .base import Engine\n"
    in_module = imports_of("tokenrelay.runner.engines.synthetic", module, is_package=False, known=known)
    in_package = imports_of("tokenrelay.runner.engines", package, is_package=True, known=known)
    assert [item.target for item in in_module] == [
        "tokenrelay.runner.engines.base",
        "tokenrelay.runner.generation",
        "tokenrelay.wire",
    ]
    assert [item.target for item in in_package] == ["tokenrelay.runner.engines.base"] * 2


def test_the_cycle_finder_reports_the_import_lines_of_one_cycle_path() -> None:
    imports = [
        Import("a", "b", "a.py", 3, "from b import x"),
        Import("b", "c", "b.py", 4, "import c"),
        Import("c", "a", "c.py", 5, "from a import y"),
        Import("c", "d", "c.py", 6, "import d"),
        Import("d", "d", "d.py", 7, "import d"),
    ]
    (cycle,) = import_cycles(imports)
    assert [str(item) for item in cycle] == ["a.py:3: from b import x", "b.py:4: import c", "c.py:5: from a import y"]


def test_the_import_walker_reads_every_module_of_tokenrelay_and_bench() -> None:
    edges = {(item.importer, item.target) for item in all_imports()}
    assert ("tokenrelay.runner.engines.registry", "tokenrelay.runner.engines.transformers") in edges
    assert any(top_of(importer) == BENCH and top_of(target) == PACKAGE for importer, target in edges)


# The rules.


def test_no_tokenrelay_module_is_part_of_an_import_cycle() -> None:
    ours = [item for item in all_imports() if top_of(item.importer) == PACKAGE and top_of(item.target) == PACKAGE]
    cycles = list(import_cycles(ours))
    report = "\n".join(
        " -> ".join([cycle[0].importer, *(item.target for item in cycle)]) + "\n" + describe(cycle) for cycle in cycles
    )
    assert not cycles, f"{len(cycles)} import cycle(s) among tokenrelay modules:\n{report}"


def test_every_part_of_tokenrelay_has_a_rule_for_what_it_may_import() -> None:
    parts = {part_of(name) for name in find_modules(PACKAGE)}
    assert parts <= set(ALLOWED_IMPORTS), (
        f"parts of tokenrelay without an import rule: {sorted(parts - set(ALLOWED_IMPORTS))}"
    )


def test_the_wire_contract_imports_nothing_of_tokenrelay_outside_itself() -> None:
    assert_part_imports_only_what_it_may("wire")


def test_the_runtime_imports_only_the_wire_contract_and_itself() -> None:
    assert_part_imports_only_what_it_may("runtime")


@pytest.mark.parametrize("role", ROLES)
def test_a_role_imports_only_the_wire_contract_the_runtime_and_itself_never_another_role(role: str) -> None:
    assert_part_imports_only_what_it_may(role)


def test_the_client_imports_only_the_wire_contract_and_itself() -> None:
    assert_part_imports_only_what_it_may("client")


def test_the_load_tool_imports_only_the_wire_contract_the_runtime_the_client_and_itself() -> None:
    assert_part_imports_only_what_it_may("loadtest")


def test_nothing_in_tokenrelay_imports_the_tests_or_the_benchmarks() -> None:
    violations = [
        item for item in all_imports() if top_of(item.importer) == PACKAGE and top_of(item.target) in {TESTS, BENCH}
    ]
    assert not violations, "tokenrelay must not import tests or bench:\n" + describe(violations)


def test_the_benchmarks_import_no_tests_module() -> None:
    violations = [item for item in all_imports() if top_of(item.importer) == BENCH and top_of(item.target) == TESTS]
    assert not violations, "bench must not import tests (shared code belongs in tokenrelay.testing):\n" + describe(
        violations
    )


def test_no_tokenrelay_module_is_over_500_lines() -> None:
    lengths = {
        module.path.relative_to(REPOSITORY): len(module.path.read_text(encoding="utf-8").splitlines())
        for module in find_modules(PACKAGE).values()
    }
    too_long = sorted((path, lines) for path, lines in lengths.items() if lines > MAX_MODULE_LINES)
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines (split them, one concept per module):\n" + "\n".join(
        f"  {path}: {lines} lines" for path, lines in too_long
    )
