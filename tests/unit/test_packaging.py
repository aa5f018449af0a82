"""The wheel as users install it: one top-level package, its type information, its page and its licence.

Built from a copy of the repository's sources, the other Python folders (``bench``, ``tests``, ``examples``) included
as ``pip wheel .`` sees them, with no build isolation: the test environment's setuptools builds it, so nothing is
downloaded.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "NOTICE", "tokenrelay", "bench", "tests", "examples")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    pytest.importorskip("setuptools")
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        path = REPOSITORY / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    out = tmp_path_factory.mktemp("wheel")
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), "."]
    subprocess.run(argv, cwd=source, check=True, capture_output=True)
    (built,) = out.glob("tokenrelay-*.whl")
    with zipfile.ZipFile(built) as archive:
        return archive.namelist()


def test_the_wheel_holds_one_top_level_package(wheel: list[str]) -> None:
    tops = {name.split("/")[0] for name in wheel if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"tokenrelay"}


def test_the_wheel_ships_its_type_information(wheel: list[str]) -> None:
    assert "tokenrelay/py.typed" in wheel


def test_the_wheel_ships_the_browser_page(wheel: list[str]) -> None:
    page = ("index.html", "app.js", "markdown.js", "style.css")
    assert {f"tokenrelay/gateway/static/{name}" for name in page} <= set(wheel)


def test_the_wheel_ships_the_pages_vendored_libraries_with_their_licences(wheel: list[str]) -> None:
    vendored = ("marked.umd.js", "purify.min.js", "marked.LICENSE", "dompurify.LICENSE", "VENDORED.md")
    assert {f"tokenrelay/gateway/static/vendor/{name}" for name in vendored} <= set(wheel)


def test_the_wheel_ships_the_licence_and_notice(wheel: list[str]) -> None:
    licences = {Path(name).name for name in wheel if ".dist-info/licenses/" in name}
    assert {"LICENSE", "NOTICE"} <= licences
