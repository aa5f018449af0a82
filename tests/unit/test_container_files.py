"""The container files, checked without a container engine: what they copy and mount exists and reaches the build.

The ``Dockerfile`` is read instruction by instruction (line continuations joined, comments dropped), ``compose.yaml``
with pyyaml, and ``.dockerignore`` with Docker's matching rules: patterns are paths relative to the build context,
``*`` and ``?`` stay within one path segment, ``**`` spans any number of them, a pattern that matches a folder
excludes everything under it, ``!`` re-includes, and the last matching pattern wins.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

REPOSITORY = Path(__file__).resolve().parents[2]
DOCKERFILE = REPOSITORY / "Dockerfile"
DOCKERIGNORE = REPOSITORY / ".dockerignore"
COMPOSE = REPOSITORY / "compose.yaml"
PACKAGE = "tokenrelay"
BUILD_ARTIFACTS = re.compile(r"(^|/)__pycache__(/|$)|\.py[co]$")
"""Files under a copied folder that the build context may leave out: bytecode the image compiles itself."""


@dataclass(frozen=True, slots=True)
class Instruction:
    """One Dockerfile instruction: its keyword, its arguments as written, and the line it starts on."""

    keyword: str
    arguments: str
    line: int


def instructions(text: str) -> list[Instruction]:
    """A Dockerfile's instructions, with line continuations joined and comment lines dropped."""
    found: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction is not part of it
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped.removesuffix("\\").strip())
        if not continued:
            keyword, _, arguments = " ".join(pending).partition(" ")
            found.append(Instruction(keyword.upper(), arguments.strip(), start))
            pending = []
    return found


def copy_sources(instruction: Instruction) -> list[str]:
    """The build-context paths a ``COPY`` or ``ADD`` takes (none when it copies from another stage or image)."""
    arguments = instruction.arguments
    if arguments.startswith("["):
        words: list[str] = json.loads(arguments)
    else:
        words = shlex.split(arguments)
    flags = [w for w in words if w.startswith("--")]
    if any(flag.startswith("--from=") for flag in flags):
        return []
    paths = [w for w in words if not w.startswith("--")]
    return paths[:-1]  # the last one is the destination


@cache
def dockerfile() -> list[Instruction]:
    """The repository's Dockerfile, parsed."""
    return instructions(DOCKERFILE.read_text(encoding="utf-8"))


def copied() -> list[str]:
    """Every build-context path the Dockerfile copies, as written (``./`` and trailing ``/`` removed)."""
    sources = [s for i in dockerfile() if i.keyword in {"COPY", "ADD"} for s in copy_sources(i)]
    return [PurePosixPath(s).as_posix().removeprefix("./") for s in sources]


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A ``.dockerignore`` pattern as a regular expression over context-relative paths."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


@dataclass(frozen=True, slots=True)
class IgnoreRule:
    """One ``.dockerignore`` line: a pattern, and whether it re-includes (``!``)."""

    regex: re.Pattern[str]
    include: bool


def ignore_rules(text: str) -> list[IgnoreRule]:
    """The rules of a ``.dockerignore`` file, in order."""
    rules: list[IgnoreRule] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = PurePosixPath(line.removeprefix("!").strip().lstrip("/")).as_posix()
        rules.append(IgnoreRule(pattern_regex(pattern), include))
    return rules


def excluded(path: str, rules: list[IgnoreRule]) -> bool:
    """Whether Docker leaves ``path`` (relative to the context) out of the build context."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for rule in rules:
        if any(rule.regex.fullmatch(candidate) for candidate in candidates):
            verdict = not rule.include
    return verdict


def files_under(path: Path) -> Iterator[str]:
    """Every file at or under ``path``, relative to the repository."""
    if path.is_file():
        yield path.relative_to(REPOSITORY).as_posix()
        return
    for found in sorted(path.rglob("*")):
        if found.is_file():
            yield found.relative_to(REPOSITORY).as_posix()


@cache
def compose() -> dict[str, Any]:
    """``compose.yaml``, parsed (merge keys resolved)."""
    loaded = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def bind_sources(service: dict[str, Any]) -> Iterator[str]:
    """The host paths a service mounts, in either of compose's volume syntaxes (named volumes excluded)."""
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source = volume.split(":", 1)[0]
        else:
            source = volume.get("source", "") if volume.get("type") == "bind" else ""
        if source.startswith((".", "/", "~")):
            yield source


def referenced_files() -> Iterator[tuple[str, str]]:
    """Every repository path compose.yaml points at, with what points at it."""
    document = compose()
    for name, service in document.get("services", {}).items():
        build = service.get("build")
        if isinstance(build, str):
            yield f"services.{name}.build", build
            yield f"services.{name}.build (Dockerfile)", f"{build}/Dockerfile"
        elif isinstance(build, dict):
            context = build.get("context", ".")
            yield f"services.{name}.build.context", context
            yield f"services.{name}.build.dockerfile", f"{context}/{build.get('dockerfile', 'Dockerfile')}"
        for source in bind_sources(service):
            yield f"services.{name}.volumes", source
        env_files = service.get("env_file", [])
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            yield f"services.{name}.env_file", env_file if isinstance(env_file, str) else env_file["path"]
    for section in ("configs", "secrets"):
        for name, entry in (document.get(section) or {}).items():
            if isinstance(entry, dict) and "file" in entry:
                yield f"{section}.{name}.file", entry["file"]


def test_the_dockerfile_copies_something() -> None:
    assert copied(), "the Dockerfile copies nothing from the build context"


@pytest.mark.parametrize("source", copied())
def test_every_path_the_dockerfile_copies_exists(source: str) -> None:
    assert (REPOSITORY / source).exists(), f"the Dockerfile copies {source}, which is not in the repository"


@pytest.mark.parametrize("source", copied())
def test_dockerignore_keeps_everything_the_dockerfile_copies_in_the_build_context(source: str) -> None:
    rules = ignore_rules(DOCKERIGNORE.read_text(encoding="utf-8"))
    left_out = [f for f in files_under(REPOSITORY / source) if excluded(f, rules) and not BUILD_ARTIFACTS.search(f)]
    assert not left_out, f".dockerignore leaves out of the build context files the Dockerfile copies: {left_out}"


def test_the_dockerfile_installs_the_one_package_from_its_own_sources() -> None:
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == [f"{PACKAGE}*"]
    sources = set(copied())
    assert {"pyproject.toml", PACKAGE} <= sources
    assert project["project"]["readme"] in sources, "the build reads the readme the metadata names"
    other_packages = [s for s in sources if s != PACKAGE and (REPOSITORY / s / "__init__.py").exists()]
    assert not other_packages, f"the Dockerfile copies packages besides {PACKAGE}: {other_packages}"
    pip_install_here = re.compile(r"\bpip install\b[^&;]*\s\.(\s|$)")
    installs = [i for i in dockerfile() if i.keyword == "RUN" and pip_install_here.search(i.arguments)]
    assert installs, "no RUN pip install . of the copied project"


def test_the_image_runs_the_tokenrelay_command_as_a_non_root_user() -> None:
    users = [i.arguments for i in dockerfile() if i.keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}
    entry = [i.arguments for i in dockerfile() if i.keyword in {"CMD", "ENTRYPOINT"}]
    assert entry and json.loads(entry[-1])[0] == "tokenrelay"


def test_compose_references_files_that_exist() -> None:
    references = list(referenced_files())
    assert any(where.endswith("volumes") for where, _ in references), "compose.yaml mounts no file"
    missing = [f"{where}: {path}" for where, path in references if not (REPOSITORY / path).resolve().exists()]
    assert not missing, "compose.yaml references paths not in the repository:\n" + "\n".join(missing)


def test_compose_mounts_the_nginx_config_from_deploy() -> None:
    nginx = compose()["services"]["nginx"]
    assert "./deploy/nginx.conf" in set(bind_sources(nginx))


def test_every_role_service_builds_from_the_repository_dockerfile() -> None:
    roles = {"gateway", "streamer", "runner"}
    services = compose()["services"]
    assert roles <= set(services)
    for role in roles:
        assert services[role].get("build") in {".", "./"}, f"{role} is not built from the repository"
        command = services[role]["command"]
        words = command.split() if isinstance(command, str) else command
        assert words[:2] == ["tokenrelay", role], f"{role} runs {words[:2]}"


@pytest.mark.parametrize(
    ("path", "is_excluded"),
    [
        ("tests/unit/test_docs.py", True),
        ("tokenrelay/wire/codec.py", False),
        ("tokenrelay/wire/__pycache__/codec.cpython-311.pyc", True),
        ("tokenrelay.egg-info/PKG-INFO", True),
        (".venv/bin/python", True),
        ("README.md", False),
    ],
)
def test_dockerignore_matching_follows_dockers_rules_on_this_repository(path: str, is_excluded: bool) -> None:
    assert excluded(path, ignore_rules(DOCKERIGNORE.read_text(encoding="utf-8"))) is is_excluded


@pytest.mark.parametrize(
    ("rules", "path", "is_excluded"),
    [
        ("*.md\n!README.md", "README.md", False),
        ("*.md\n!README.md", "SECURITY.md", True),
        ("docs/*.md", "docs/sub/a.md", False),
        ("**/*.md", "docs/sub/a.md", True),
        ("build", "build/lib/x.py", True),
        ("/dist", "dist/a.whl", True),
        ("tok?nrelay", "tokenrelay/x.py", True),
    ],
)
def test_dockerignore_matching_handles_wildcards_folders_and_exceptions(
    rules: str, path: str, is_excluded: bool
) -> None:
    assert excluded(path, ignore_rules(rules)) is is_excluded
