"""Background children (index builds, the relay process) of a parent that is pid 1, as
`geo-offers serve` is in a container: they must run. They used to exit at once, taking
"my parent is pid 1" for "my parent died"."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import os


def main() -> None:
    from service.fences import builder

    pool = builder.new_pool()
    print("parent pid", os.getpid())
    print("child pid", pool.submit(os.getpid).result(timeout=60))


if __name__ == "__main__":
    main()
"""


def test_an_index_build_child_runs_under_a_parent_that_is_pid_1(tmp_path: Path) -> None:
    pid_namespace = ["unshare", "--pid", "--fork", "--mount-proc"]
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    probe = subprocess.run([*pid_namespace, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no PID namespace for this user: {probe.stderr.strip()}")
    script = tmp_path / "pid1.py"
    script.write_text(PROBE)
    out = subprocess.run(
        [*pid_namespace, sys.executable, str(script)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "parent pid 1" in lines, out.stdout
    assert any(line.startswith("child pid ") and line != "child pid 1" for line in lines)
