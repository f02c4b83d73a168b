"""Run ``python -m csa_lib.cli`` in a real subprocess, optionally SIGKILLed at a chosen point.

The kill uses the trainer's fault hook ``CSA_KILL_AT=point@step`` (``csa_lib.runfiles.kill_point``): the
process sends SIGKILL to itself at exactly that point (inside a checkpoint save, between two renames,
...), which a test could not hit reliably by polling files from outside. The process dies as it would
under ``kill -9``: no ``finally`` blocks, no flushing, open files and locks dropped by the kernel.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from csa_lib.config import REPO_ROOT


def csa(*args: str, kill_at: str | None = None, timeout: float = 600,
        preexec_fn=None) -> subprocess.CompletedProcess:
    """``csa ARGS`` in a subprocess (one CPU thread). With ``kill_at`` the process must die by SIGKILL."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    env.pop("CSA_KILL_AT", None)
    if kill_at is not None:
        env["CSA_KILL_AT"] = kill_at
    proc = subprocess.run([sys.executable, "-m", "csa_lib.cli", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=env, timeout=timeout, preexec_fn=preexec_fn)
    if kill_at is not None:
        assert proc.returncode == -signal.SIGKILL, (kill_at, proc.returncode, proc.stderr[-2000:])
    return proc


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single ``csa: error: ...`` line of a failed command (asserts there is exactly that)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("csa: error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0]
