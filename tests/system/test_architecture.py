"""The import rules of pyproject.toml's import-linter contracts hold, and a forbidden import breaks them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"],
        cwd=root,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_tree_keeps_every_contract() -> None:
    done = _lint(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("coordinator/protocol.py", "import grpc", "The protocol is pure"),
        ("coordinator/protocol.py", "import asyncio", "The protocol is pure"),
        ("participant/stub.py", "import xatm.coordinator.engine", "The participant SDK never imports"),
        ("coordinator/txlog/file/writer.py", "import xatm.coordinator.engine", "The file WAL needs nothing"),
        ("coordinator/engine/core.py", "import xatm.participant.stub", "The coordinator server uses only"),
        ("coordinator/server/http.py", "import participant.xa", "Nothing imports the source folders"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    for package in ("coordinator", "participant"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "xatm", tmp_path / "xatm", symlinks=True)
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    done = _lint(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{contract}" in done.stdout and "BROKEN" in done.stdout
