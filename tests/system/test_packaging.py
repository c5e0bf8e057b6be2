"""What `pip install .` (not editable) gives: one root package, the example services, a working demo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("wheel")
    # A copy of the tree, so a stale build/ directory of the checkout cannot leak into the wheel.
    tree = out / "src"
    ignore = ("build", ".venv", "*.egg-info", "__pycache__", ".git", ".pytest_cache", ".mypy_cache")
    shutil.copytree(REPO, tree, symlinks=True, ignore=shutil.ignore_patterns(*ignore))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q"]
    done = subprocess.run(
        [*build, "-w", str(out), str(tree)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (found,) = out.glob("xatm-*.whl")
    yield found


def test_the_wheel_holds_one_root_package_with_its_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"
    assert {n.split("/")[0] for n in names} == {"xatm", dist_info}
    for needed in (
        "xatm/__init__.py",
        "xatm/participant/py.typed",
        "xatm/coordinator/py.typed",
        "xatm/participant/api/v1/xa_pb2.pyi",
        "xatm/coordinator/txlog/_proto/wal_pb2.pyi",
        "xatm/coordinator/tools/bank/account_service.py",
        "xatm/coordinator/tools/bank/_proto/bank_pb2.py",
        "xatm/coordinator/server/console/static/index.html",
    ):
        assert needed in names, needed


def test_installed_from_the_wheel_it_imports_and_the_demo_runs_outside_the_checkout(
    wheel: Path, tmp_path: Path
) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = (
        "import importlib.util as u, xatm, xatm.participant, xatm.coordinator.app; "
        "print(xatm.__file__); print(u.find_spec('participant'), u.find_spec('coordinator'))"
    )
    where = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert where.returncode == 0, where.stderr
    origin, shadows = where.stdout.splitlines()
    assert origin.startswith(str(target)) and shadows == "None None"
    demo = subprocess.run(
        [sys.executable, "-m", "xatm", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "every outcome was as expected" in demo.stdout
