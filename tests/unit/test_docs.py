"""The repository's documentation, read as text: links that resolve, a short README, the product's words only.

Markdown is parsed just enough for these checks: fenced code blocks are skipped for links and headings, inline
code spans are kept apart from prose, and heading anchors are the slugs GitHub renders (lowercase, punctuation
dropped, spaces to hyphens, ``-1``, ``-2``, … for repeats).  Nothing here needs a server or the network.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tokenrelay.wire.errors import ErrorCode

REPOSITORY = Path(__file__).resolve().parents[2]
README = REPOSITORY / "README.md"
MAX_README_LINES = 500
"""The README is for users; everything longer belongs in docs/."""

CHANGELOG = REPOSITORY / "CHANGELOG.md"
API_DOC = REPOSITORY / "docs" / "api.md"
ARCHITECTURE_DOC = REPOSITORY / "docs" / "architecture.md"
SANS_IO_HEADING = "Sans-I/O cores"

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HTML_ANCHOR = re.compile(r"""<a\s+(?:name|id)\s*=\s*["']([^"']+)["']""")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")

FORBIDDEN_WORDS = {
    "session": re.compile(r"session", re.IGNORECASE),
    "an issue number": re.compile(r"\bissues?\s*#?\s*\d+", re.IGNORECASE),
    "a #<number> reference": re.compile(r"(?<![\w&/#])#\d+\b"),
    "DESIGN.md": re.compile(r"design\.md", re.IGNORECASE),
}
"""Words the repository's docs never contain: how the work was organised is not part of the product."""

REPOSITORY_PATH = re.compile(r"^(?:tokenrelay|tests|bench|deploy|docs|examples|\.ci)/[\w./-]*$")
"""An inline-code span that names a file or folder of this repository (placeholders like ``<id>`` excluded)."""

MODULE_PATH = re.compile(r"^tokenrelay(?:\.\w+)+$")
IO_IMPORTS = frozenset({"asyncio", "aiohttp", "nats", "socket", "selectors", "ssl", "subprocess"})
"""Modules a sans-I/O core never imports."""


def documents() -> list[Path]:
    """Every Markdown file the repository ships as documentation."""
    found = [README, REPOSITORY / "SECURITY.md", CHANGELOG]
    found += sorted((REPOSITORY / "docs").glob("*.md"))
    found += sorted((REPOSITORY / "deploy").glob("*.md"))
    return [path for path in found if path.exists()]


def relative(path: Path) -> str:
    """``path`` as the repository names it, for messages."""
    return path.relative_to(REPOSITORY).as_posix()


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a document, and whether it sits inside a fenced code block."""

    number: int
    text: str
    in_code: bool


def lines(path: Path) -> list[Line]:
    """The document's lines, each marked inside or outside a fenced code block (fence lines count as inside)."""
    marked: list[Line] = []
    in_code = False
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fence = FENCE.match(text) is not None
        marked.append(Line(number, text, in_code or fence))
        if fence:
            in_code = not in_code
    return marked


def prose(text: str) -> str:
    """A line with its inline code spans removed (a link inside backticks is not a link)."""
    return CODE_SPAN.sub("", text)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading's text (before numbering repeats)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays, its target goes
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    """Every anchor a link may name in ``path``: its headings' slugs (repeats numbered) and explicit HTML anchors."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in lines(path):
        if line.in_code:
            continue
        found.update(HTML_ANCHOR.findall(line.text))
        match = HEADING.match(line.text)
        if match is None:
            continue
        slug = github_slug(match.group(2))
        repeat = seen.get(slug, 0)
        seen[slug] = repeat + 1
        found.add(slug if repeat == 0 else f"{slug}-{repeat}")
    return frozenset(found)


@dataclass(frozen=True, slots=True)
class Link:
    """A link found in a document."""

    document: Path
    line: int
    target: str

    def __str__(self) -> str:
        return f"{relative(self.document)}:{self.line}: ({self.target})"


def links(path: Path) -> Iterator[Link]:
    """Every inline link, image and reference definition outside code in ``path``."""
    for line in lines(path):
        if line.in_code:
            continue
        text = prose(line.text)
        for match in INLINE_LINK.finditer(text):
            yield Link(path, line.number, match.group(1))
        definition = REFERENCE_DEFINITION.match(text)
        if definition is not None:
            yield Link(path, line.number, definition.group(1))


def broken(link: Link) -> str | None:
    """Why a relative link does not resolve, or ``None`` when it does (links with a scheme are not checked)."""
    if SCHEME.match(link.target) or link.target.startswith("//"):
        return None
    path_part, _, anchor = link.target.partition("#")
    target = (link.document if not path_part else link.document.parent / path_part).resolve()
    if not target.is_relative_to(REPOSITORY):
        return "points outside the repository"
    if not target.exists():
        return f"{path_part} does not exist"
    if anchor:
        if target.suffix != ".md":
            return f"an anchor into {path_part}, which is not Markdown"
        if anchor not in anchors(target):
            return f"no heading in {relative(target)} has the anchor #{anchor}"
    return None


def code_spans(path: Path) -> Iterator[tuple[int, str]]:
    """Every inline code span outside fenced code, with its line number."""
    for line in lines(path):
        if not line.in_code:
            for match in CODE_SPAN.finditer(line.text):
                yield line.number, match.group(2).strip()


def test_docs_are_found() -> None:
    names = {relative(path) for path in documents()}
    assert {"README.md", "SECURITY.md", "CHANGELOG.md", "docs/api.md", "deploy/README.md"} <= names


@pytest.mark.parametrize("document", documents(), ids=relative)
def test_every_relative_link_and_anchor_in_the_docs_resolves(document: Path) -> None:
    failures = [f"{link}: {reason}" for link in links(document) if (reason := broken(link)) is not None]
    assert not failures, "\n".join(failures)


def test_readme_fits_in_the_line_budget_for_users() -> None:
    count = len(README.read_text(encoding="utf-8").splitlines())
    assert count <= MAX_README_LINES, f"README.md has {count} lines; move reference material to docs/"


def test_readme_has_a_table_of_contents_whose_entries_lead_to_its_headings() -> None:
    entries = [link for link in links(README) if link.target.startswith("#")]
    assert len(entries) >= 5, "README.md has no table of contents"
    assert all(broken(link) is None for link in entries)


@pytest.mark.parametrize("document", documents(), ids=relative)
def test_docs_speak_of_the_product_only(document: Path) -> None:
    failures = [
        f"{relative(document)}:{line.number}: mentions {name}: {line.text.strip()}"
        for line in lines(document)
        for name, pattern in FORBIDDEN_WORDS.items()
        if pattern.search(line.text)
    ]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("document", [d for d in documents() if d != CHANGELOG], ids=relative)
def test_repository_paths_named_in_the_docs_exist(document: Path) -> None:
    # The changelog names the paths of earlier versions on purpose; every other doc describes this one.
    missing = [
        f"{relative(document)}:{number}: `{span}`"
        for number, span in code_spans(document)
        if REPOSITORY_PATH.match(span) and not (REPOSITORY / span.rstrip("/")).exists()
    ]
    assert not missing, "these paths do not exist:\n" + "\n".join(missing)


def module_exists(dotted: str) -> bool:
    """Whether ``dotted`` names a module of this repository, or a name defined at the top of one."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        base = REPOSITORY.joinpath(*parts[:end])
        source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if not source.exists():
            continue
        rest = parts[end:]
        if not rest:
            return True
        if len(rest) > 1:
            return False
        tree = ast.parse(source.read_text(encoding="utf-8"))
        return rest[0] in top_level_names(tree)
    return False


def top_level_names(tree: ast.Module) -> set[str]:
    """The names a module defines or imports at its top level."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def package_parts() -> frozenset[str]:
    """The packages and modules directly inside ``tokenrelay`` (``wire``, ``runtime``, ``gateway``, …)."""
    root = REPOSITORY / "tokenrelay"
    return frozenset(p.stem for p in root.iterdir() if (p / "__init__.py").exists() or p.suffix == ".py")


@pytest.mark.parametrize("document", [d for d in documents() if d != CHANGELOG], ids=relative)
def test_modules_named_in_the_docs_exist(document: Path) -> None:
    # Only names under a part of the package: ``tokenrelay.jobs`` is a NATS subject, ``tokenrelay.lifecycle`` a
    # logger, and neither claims to be a module.
    parts = package_parts()
    missing = [
        f"{relative(document)}:{number}: `{span}`"
        for number, span in code_spans(document)
        if MODULE_PATH.match(span) and span.split(".")[1] in parts and not module_exists(span)
    ]
    assert not missing, "these modules or names do not exist:\n" + "\n".join(missing)


def sans_io_modules() -> list[str]:
    """The modules docs/architecture.md lists as sans-I/O cores (the first column of that section's table)."""
    modules: list[str] = []
    in_section = False
    for line in lines(ARCHITECTURE_DOC):
        heading = HEADING.match(line.text)
        if heading is not None and not line.in_code:
            in_section = heading.group(2).strip() == SANS_IO_HEADING
            continue
        cell = re.match(r"^\|\s*`(tokenrelay/[\w/]+\.py)`\s*\|", line.text)
        if in_section and cell is not None:
            modules.append(cell.group(1))
    return modules


def test_architecture_doc_lists_the_sans_io_cores() -> None:
    assert len(sans_io_modules()) >= 10


@pytest.mark.parametrize("module", sans_io_modules())
def test_every_module_the_docs_call_sans_io_does_no_io(module: str) -> None:
    source = REPOSITORY / module
    assert source.exists(), f"docs/architecture.md lists {module}, which does not exist"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in IO_IMPORTS]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in IO_IMPORTS:
            found.append(f"from {node.module} import …")
        elif isinstance(node, ast.AsyncFunctionDef | ast.Await | ast.AsyncFor | ast.AsyncWith):
            found.append(f"{type(node).__name__} at line {node.lineno}")
    assert not found, f"{module} is documented as sans-I/O but has: {', '.join(found)}"


def test_every_error_code_is_documented_in_the_api_reference() -> None:
    documented = {span for _, span in code_spans(API_DOC)}
    missing = [code.value for code in ErrorCode if code.value not in documented]
    assert not missing, f"docs/api.md does not document the error codes {missing}"


def test_changelog_has_an_entry_for_the_package_version() -> None:
    version = re.search(r'^__version__ = "([^"]+)"', (REPOSITORY / "tokenrelay/__init__.py").read_text(), re.M)
    assert version is not None
    assert re.search(rf"^## \[{re.escape(version.group(1))}\]", CHANGELOG.read_text(encoding="utf-8"), re.M)
