"""`csa` fixes the OpenMP/numba thread environment before torch or numba loads an OpenMP runtime."""
import argparse
import os
import sys

from csa_lib import cli

KEYS = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_WAIT_POLICY")


def test_thread_environment_is_set_before_torch_loads(monkeypatch):
    for k in KEYS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.delitem(sys.modules, "torch")  # as in a fresh `csa` process: torch not loaded yet
    cli._thread_environment(argparse.Namespace(threads=1))
    assert [os.environ[k] for k in KEYS] == ["1", "1", "PASSIVE"]


def test_user_settings_win_and_a_loaded_torch_is_left_alone(monkeypatch):
    for k in KEYS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.delitem(sys.modules, "torch")
    cli._thread_environment(argparse.Namespace(threads=1))
    assert [os.environ[k] for k in KEYS] == ["3", "3", "ACTIVE"]
    monkeypatch.undo()
    for k in KEYS:
        monkeypatch.delenv(k, raising=False)
    import torch  # noqa: F401  (loaded: its runtimes have read the environment already)

    cli._thread_environment(argparse.Namespace(threads=1))
    assert not any(k in os.environ for k in KEYS)
