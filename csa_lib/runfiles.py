"""The files of a run folder, written so that a kill at any moment leaves something usable.

A run folder (``train.out_dir``) holds::

    log.jsonl                 one JSON object per logged step (appended one whole line at a time)
    checkpoints/last.pt       the newest checkpoint; prev.pt the one before it; next.pt only between the
                              two renames of a save that a kill interrupted; step_XXXXXXX.pt snapshots
    samples/, tb/             sample grids and TensorBoard events (written by the trainer)
    .lock                     the pid of the process training there (:class:`RunLock`)

What this module guarantees, and how:

- a file is replaced whole or not at all: :func:`atomic_save` writes ``.NAME.tmpPID`` beside it, fsyncs,
  then ``os.replace`` (atomic on POSIX) and fsyncs the folder; a full disk leaves the old file untouched;
- a checkpoint save keeps the previous good one (:func:`save_rotated`: ``next.pt``, then ``last.pt`` ->
  ``prev.pt``, then ``next.pt`` -> ``last.pt``); :func:`load_checkpoint` falls back from a torn
  ``last.pt`` to ``prev.pt``, :func:`finish_interrupted_save` completes a save cut between the renames;
- a log line is one ``write`` on an ``O_APPEND`` descriptor (:func:`append_line`): a kill leaves a torn
  *last* line at worst, which :func:`read_log` drops and :func:`trim_log` removes on resume;
- only one process writes a run folder (:class:`RunLock`, a ``flock`` the kernel drops when its holder
  dies); the lock holder removes the temporary files a killed save left (:func:`remove_orphan_temps`).

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and primitive containers only.
The fault-injection hook of the reliability tests (``CSA_KILL_AT``) lives here too (:func:`kill_point`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from .errors import first_line

CKPT_DIR = "checkpoints"
LAST, PREV, NEXT = "last.pt", "prev.pt", "next.pt"
LOCK_FILE = ".lock"
#: The temporary files this module writes (``.next.pt.tmp1234``, ``.log.jsonl.tmp1234``): the only files
#: :func:`remove_orphan_temps` deletes, so a user's ``.draft.tmpl`` in a run folder is never touched.
TEMP_NAME = re.compile(r"\.(?:[^/]+\.pt|log\.jsonl)\.tmp\d+")


class RunInUseError(RuntimeError):
    """Another process holds the run folder's lock (it is training into that folder)."""


def kill_point(point: str, step: int) -> None:
    """Fault-injection hook for the reliability tests: ``CSA_KILL_AT=point@step`` (e.g. ``tmp@4``) makes
    the process SIGKILL itself at that point of that step, as a power cut or the OOM killer would.
    Points: ``step`` (after a step, before its log line), ``tmp`` (checkpoint temp file written, not yet
    renamed), ``next`` (``next.pt`` in place, not yet rotated), ``rotated`` (``last.pt`` moved to
    ``prev.pt``, ``next.pt`` not yet renamed: no ``last.pt`` on disk). Unset, it does nothing."""
    if os.environ.get("CSA_KILL_AT") == f"{point}@{step}":
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------
def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``.

    A crash at any point leaves either the old file or the new one, never a torn file (a kill may leave
    the temporary ``.NAME.tmpPID``; :func:`remove_orphan_temps` cleans those up on the next start).
    """
    path = Path(path)
    tmp = _write_temp(obj, path)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def _write_temp(obj: Any, path: Path) -> Path:
    """``obj`` written and fsynced to ``.NAME.tmpPID`` beside ``path``; returns that temporary file.

    A failed write (a full disk shows up as torch's "PytorchStreamWriter failed writing file") removes
    the temporary file and raises ``OSError`` naming ``path``: the file it would replace is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, Exception):
            raise OSError(f"cannot write {path}: {first_line(e)} (disk full or not writable?); "
                          f"the file it would replace is untouched") from e
        raise
    return tmp


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not supported on every platform (Windows), hence the guard.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Checkpoints: where they are, reading them, rotating them
# --------------------------------------------------------------------------------------------------
def run_dir_of(path: Path) -> Path:
    """The run folder of a checkpoint file (``run/checkpoints/last.pt`` -> ``run``) or of a run folder."""
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == CKPT_DIR else path.parent


def checkpoint_candidates(path: str | Path) -> list[Path]:
    """Where to look for a checkpoint, newest first.

    A run folder: ``checkpoints/next.pt`` (only present when a kill hit a save between writing it and
    renaming it to ``last.pt``; it is complete, since it was itself written atomically), then ``last.pt``,
    then ``prev.pt``. A file: the file itself, and for ``.../last.pt`` its sibling ``prev.pt`` too.
    """
    path = Path(path)
    if path.is_file():
        backup = path.with_name(PREV)
        return [path, backup] if path.name == LAST and backup.is_file() else [path]
    if not path.exists():
        raise FileNotFoundError(f"checkpoint or run folder not found: {path}")
    folder = path / CKPT_DIR if (path / CKPT_DIR).is_dir() else path
    found = [folder / name for name in (NEXT, LAST, PREV) if (folder / name).is_file()]
    if not found:
        raise FileNotFoundError(f"no checkpoint ({LAST} or {PREV}) in {folder}")
    return found


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether a run folder holds any trainer checkpoint (``last.pt``, ``prev.pt`` or an unrenamed
    ``next.pt``): a new run must not start over it silently."""
    folder = Path(run_dir) / CKPT_DIR
    return any((folder / name).is_file() for name in (NEXT, LAST, PREV))


def _read_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """One checkpoint file (``weights_only=True``), or ``ValueError`` naming it (empty, torn, foreign)."""
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes)")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a torn or foreign file
        raise ValueError(f"cannot read checkpoint {path}: {first_line(e)}") from None
    if not isinstance(ckpt, dict) or "generator" not in ckpt or "preset" not in ckpt:
        raise ValueError(f"{path} is not a csa_lib training checkpoint")
    return ckpt


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a trainer checkpoint (``weights_only=True``): a file, or a run folder's newest loadable one
    (see :func:`checkpoint_candidates`; a torn or empty ``last.pt`` falls back to ``prev.pt`` with a
    warning). ``ckpt["path"]`` says which file it was. Errors name the files."""
    errors = []
    for candidate in checkpoint_candidates(path):
        try:
            ckpt = _read_checkpoint(candidate, device)
        except ValueError as e:  # try the previous one
            errors.append(str(e))
            continue
        if errors:
            warnings.warn(f"{'; '.join(errors)}; using {candidate} (step {ckpt.get('step')}) instead",
                          stacklevel=2)
        ckpt["path"] = str(candidate)
        return ckpt
    raise ValueError("; ".join(errors))


def checkpoint_loads(path: Path) -> bool:
    """Whether ``path`` is a readable trainer checkpoint (what :func:`load_checkpoint` would accept)."""
    try:
        _read_checkpoint(path)
        return True
    except (ValueError, OSError):
        return False


def save_rotated(obj: Any, last: Path, last_ok: bool | None = None, step: int = 0) -> Path:
    """Write ``obj`` as the checkpoint ``last`` (``.../checkpoints/last.pt``), keeping the one it
    replaces as ``prev.pt``.

    The sequence (each rename atomic; :func:`load_checkpoint` and :func:`finish_interrupted_save` handle
    a kill between any two): write ``.next.pt.tmpPID``, fsync, rename to ``next.pt``; rename ``last.pt``
    to ``prev.pt``; rename ``next.pt`` to ``last.pt``. A ``last.pt`` that does not load is never rotated:
    it is replaced, and the good ``prev.pt`` stays. ``last_ok`` says whether the current ``last.pt``
    loads when the caller knows (None: it is read to find out). ``step`` only names the kill points.
    """
    nxt = last.with_name(NEXT)
    tmp = _write_temp(obj, nxt)
    kill_point("tmp", step)
    os.replace(tmp, nxt)
    kill_point("next", step)
    if last.exists():
        if last_ok is None:
            last_ok = checkpoint_loads(last)
        if last_ok:
            os.replace(last, last.with_name(PREV))
        else:
            warnings.warn(f"{last} does not load: replacing it, keeping {PREV} as the backup", stacklevel=3)
    kill_point("rotated", step)
    os.replace(nxt, last)
    _fsync_dir(last.parent)
    return last


def keep_snapshot(last: Path, step: int) -> Path:
    """Keep the checkpoint ``last`` also as ``step_XXXXXXX.pt`` beside it (a hard link where the file
    system allows: no extra space; else a copy). An existing snapshot of that step is left alone."""
    snapshot = last.with_name(f"step_{step:07d}.pt")
    if not snapshot.exists():
        try:
            os.link(last, snapshot)
        except OSError:  # no hard links here: copy
            shutil.copyfile(last, snapshot)
    return snapshot


def remove_orphan_temps(run_dir: str | Path) -> list[Path]:
    """Delete the temporary files (``.NAME.tmpPID``) that a killed save or log rewrite left in a run folder.

    Only call this while holding the run's :class:`RunLock`: then no other process is writing there, so
    every temporary file is an orphan (at paper size each is a full checkpoint: gigabytes). Only names
    of :data:`TEMP_NAME` (``.next.pt.tmp1234``, ``.log.jsonl.tmp1234``) are deleted: other files stay.
    """
    run_dir = Path(run_dir)
    found = [p for folder in (run_dir, run_dir / CKPT_DIR) if folder.is_dir()
             for p in folder.glob(".*.tmp*") if p.is_file() and TEMP_NAME.fullmatch(p.name)]
    if found:
        size = sum(p.stat().st_size for p in found)
        for p in found:
            p.unlink(missing_ok=True)
        warnings.warn(f"removed {len(found)} temporary file(s) ({size / 2**20:.1f} MiB) left in {run_dir} by an "
                      f"interrupted save: {', '.join(p.name for p in found)}", stacklevel=2)
    return found


def finish_interrupted_save(run_dir: str | Path) -> None:
    """Complete the rotation of a save that a kill interrupted after ``next.pt`` was written.

    ``next.pt`` is then the newest complete checkpoint: it becomes ``last.pt`` and a loadable ``last.pt``
    becomes ``prev.pt`` (a torn one is dropped, keeping the good ``prev.pt``). A ``next.pt`` that does not
    load is deleted. Call it while holding the run's :class:`RunLock`.
    """
    folder = Path(run_dir) / CKPT_DIR
    nxt, last = folder / NEXT, folder / LAST
    if not nxt.is_file():
        return
    if not checkpoint_loads(nxt):
        warnings.warn(f"deleting {nxt}: it does not load", stacklevel=2)
        nxt.unlink()
        return
    if last.is_file() and checkpoint_loads(last):
        os.replace(last, folder / PREV)
    os.replace(nxt, last)
    _fsync_dir(folder)
    warnings.warn(f"finished a checkpoint save that was interrupted: {nxt.name} -> {last}", stacklevel=2)


# --------------------------------------------------------------------------------------------------
# The run lock
# --------------------------------------------------------------------------------------------------
class RunLock:
    """An exclusive lock on a run folder: ``fcntl.flock`` on ``<run>/.lock``, which holds our pid.

    Two processes writing one run would interleave log lines and race on the checkpoint renames. The
    kernel drops a ``flock`` when its process dies (even by SIGKILL), so a killed run never leaves the
    folder stuck. ``acquire`` raises :class:`RunInUseError` naming the holder's pid. No-op where
    ``fcntl`` does not exist (Windows).
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks here
            return self
        if self._file is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise RunInUseError(f"run folder {self.path.parent} is in use by another process (pid {holder}); "
                                "wait for it to finish or stop it first") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file drops the lock
            self._file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# --------------------------------------------------------------------------------------------------
# log.jsonl
# --------------------------------------------------------------------------------------------------
def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl`` file, in order. A torn last line (a kill or a full disk in the
    middle of a write) is dropped with a warning; a bad line elsewhere is a ``ValueError`` naming the
    file and the line."""
    records, torn = _read_log_tolerant(path)
    if torn:
        warnings.warn(torn, stacklevel=2)
    return records


def _read_log_tolerant(path: str | Path) -> tuple[list[dict[str, Any]], str | None]:
    """``(records, message)``: the message says which torn last line was dropped (None: none was)."""
    path = Path(path)
    text = path.read_text(errors="replace")
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    records, torn = [], None
    for k, (n, line) in enumerate(lines):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            if k == len(lines) - 1:
                torn = f"{path}: dropped a torn last line {n} ({line[:40]!r}...)"
                break
            raise ValueError(f"{path}:{n}: not a JSON record: {line[:60]!r}") from None
        records.append(record)
    return records, torn


def append_line(path: Path, text: str) -> None:
    """Append one line with a single ``write`` on an ``O_APPEND`` descriptor: a kill leaves the whole
    line or a torn last line (that :func:`read_log` drops), never a torn line in the middle."""
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):  # a full disk can cut a write short without an error
            raise OSError(f"cannot append to {path}: wrote {written} of {len(data)} bytes (disk full?)")
    except OSError as e:
        raise OSError(f"cannot append to {path}: {first_line(e)}") from e
    finally:
        os.close(fd)


def _rewrite_atomically(path: Path, text: str) -> None:
    """Replace a text file's contents through a temporary file and ``os.replace`` (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def trim_log(path: Path, step: int) -> None:
    """On resume, drop the log lines after ``step`` (written by the interrupted session after its last
    checkpoint), and a torn last line (with a warning). The file is rewritten atomically, and only when
    something changes."""
    if not path.exists():
        return
    records, torn = _read_log_tolerant(path)
    if torn:
        warnings.warn(torn, stacklevel=2)
    keep = [r for r in records if r.get("step", 0) <= step]
    if torn or len(keep) != len(records) or not path.read_bytes().endswith(b"\n"):
        _rewrite_atomically(path, "".join(json.dumps(r) + "\n" for r in keep))
