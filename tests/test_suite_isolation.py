"""The suite's own safety net: a test that kills its interpreter fails by name and the run goes on.

TensorFlow's native kernels can crash the process (docs/known-issues.md); in one process that ends the
whole run with no test named.  `make test` runs pytest-xdist workers, and this checks that set-up does
what the Makefile promises.
"""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_crashing_test_is_named_and_the_rest_still_run(tmp_path):
    (tmp_path / "test_native_crash.py").write_text(
        "import os, signal\n"
        "def test_before():\n    assert True\n"
        "def test_segfault():\n    os.kill(os.getpid(), signal.SIGSEGV)\n"
        "def test_after():\n    assert True\n"
    )
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "1", "-p", "no:cacheprovider",
                             "--rootdir", str(tmp_path), str(tmp_path / "test_native_crash.py")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "crashed while running 'test_native_crash.py::test_segfault'" in result.stdout
    assert re.search(r"1 failed, 2 passed", result.stdout), result.stdout[-2000:]


def test_make_test_runs_the_suite_in_worker_processes():
    makefile = (REPO / "Makefile").read_text()
    line = next(line for line in makefile.splitlines() if "-m pytest" in line)
    assert "-n $(TEST_WORKERS)" in line and "--max-worker-restart" in line
