"""``xatm bench`` refuses bad usage with exit code 2 before it starts anything.

Real runs, which start a coordinator and participants, are in tests/system/test_bench.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench_support import bench


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench("--scenarios", "one-phase", "--check-ratio", "0.8")[0] == 2
    (tmp_path / "leftover").write_text("")
    assert bench("--data-dir", str(tmp_path))[0] == 2
    with pytest.raises(SystemExit) as exit_info:
        bench("--branches", "1")
    assert exit_info.value.code == 2
    assert "must be between 2 and 16" in capsys.readouterr().err
