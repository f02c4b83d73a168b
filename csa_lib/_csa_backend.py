"""Back-end plumbing of the CSA layer (:mod:`csa_lib.csa`): which chain kernel runs, on how many threads,
with which scratch memory. Nothing here changes a number the layer computes.

- :func:`kernels`, :func:`triton`: the optional compiled kernels (numba :mod:`csa_lib._csa_kernels` on
  the CPU, Triton :mod:`csa_lib._csa_triton` on CUDA), imported once; None when missing or broken;
- :func:`first_launch`: a Triton kernel that fails at its first launch for a shape (a compile error, out
  of resources) turns Triton off for the process, with one warning, and the caller falls back to the torch
  chain; a failure after a successful launch is raised;
- :func:`available_chains`, :func:`pick_chain`: the back-ends that can run on a device, and ``"auto"``;
- :func:`numba_threads`, :func:`torch_threads`, :func:`cores_busy`: the numba kernels' and the torch ops'
  thread counts, one thread per image when the load average says the cores are taken
  (``CSA_SPLIT_IMAGES`` overrides the heuristic);
- :func:`workspace`: per-thread scratch buffers reused across calls.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

# --------------------------------------------------------------------------------------------------
# The optional kernel modules and the Triton fallback state
# --------------------------------------------------------------------------------------------------
_KERNELS = None
_TRITON = None
_TRITON_LAUNCHED: set = set()  # (stage, paper, C, dtype, device type) the Triton kernels already ran for


def triton():
    """Import the Triton kernels once (triton is optional): None when it is missing or broken, with one
    warning that names the error (the layer then uses the torch chain, correct but much slower)."""
    global _TRITON
    if _TRITON is None:
        try:
            from csa_lib import _csa_triton
            _TRITON = _csa_triton
        except Exception as err:  # ImportError, or a triton build that fails at import time
            _TRITON = False
            warnings.warn(f"CSA: the Triton chain is unavailable ({type(err).__name__}: {err}); "
                          "the torch chain is used instead (same result, much slower)", RuntimeWarning,
                          stacklevel=2)
    return _TRITON or None


def triton_failed(stage: str, err: Exception, stacklevel: int = 3) -> None:
    """Turn the Triton chain off for this process after it failed at its first launch, with a warning."""
    global _TRITON
    _TRITON = False
    warnings.warn(f"CSA: the Triton chain failed at its first {stage} launch ({type(err).__name__}: {err}); "
                  "falling back to the torch chain for the rest of this process", RuntimeWarning,
                  stacklevel=stacklevel)


def first_launch(stage: str, key: tuple, launch: Callable[[], Any]) -> tuple[bool, Any]:
    """``(True, launch())``, or ``(False, None)`` when ``launch`` fails and no Triton launch for ``key``
    (stage, semantics, channels, dtype, device type) has succeeded in this process: Triton is then off
    (:func:`triton_failed`) and the caller computes the same thing with the torch chain. A failure
    after a successful launch for ``key`` is a real error and is raised."""
    try:
        out = launch()
    except Exception as err:  # a compile error (or out of resources) surfaces at the first launch
        if key in _TRITON_LAUNCHED:
            raise
        triton_failed(stage, err, stacklevel=4)  # attributed to the layer's code, as before the split
        return False, None
    _TRITON_LAUNCHED.add(key)
    return True, out


def kernels():
    """Import the numba kernels once (numba is optional; None when it is missing)."""
    global _KERNELS
    if _KERNELS is None:
        try:
            from csa_lib import _csa_kernels
            _KERNELS = _csa_kernels
        except ImportError:
            _KERNELS = False
    return _KERNELS or None


# --------------------------------------------------------------------------------------------------
# Choosing a back-end
# --------------------------------------------------------------------------------------------------
def available_chains(device: str | torch.device = "cpu") -> list[str]:
    """The chain back-ends that can run on `device` here, slowest first (always includes "torch")."""
    chains = ["torch"]
    on_cpu = torch.device(device).type == "cpu"
    if on_cpu and kernels() is not None:
        chains.append("numba")
    # Triton runs on CUDA, or anywhere under its interpreter (TRITON_INTERPRET=1, used by the tests)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if (torch.device(device).type == "cuda" or (on_cpu and interpret)) and triton() is not None:
        chains.insert(1 if on_cpu else len(chains), "triton")   # interpreted Triton is slower than numba
    return chains


def pick_chain(chain: str, x: Tensor) -> str:
    """Resolve chain="auto" to the fastest back-end available for x's device; check explicit choices."""
    avail = available_chains(x.device)
    if chain == "auto":
        return avail[-1]
    if chain not in avail:
        raise RuntimeError(f"CSA: chain back-end {chain!r} is not available for {x.device} "
                           f"(available: {avail})")
    return chain


# --------------------------------------------------------------------------------------------------
# Threads of the numba kernels, and the load-average heuristic
# --------------------------------------------------------------------------------------------------
def numba_threads(batch: int) -> int:
    """Set the numba kernels' thread count and return S, the number of channel ranges each image's
    streaming passes are split into: 1 when the batch alone fills torch's intra-op threads, more for a
    batch smaller than the thread count (B = 1 on 2 cores: S = 2; the chain stays one thread per image).

    The kernels run on torch's thread count (torch.set_num_threads governs both), except when a batch
    smaller than it meets a busy machine (:func:`cores_busy`): then one thread per image. A split image
    makes every kernel wait at its barriers for the slowest thread, and with the cores taken by other
    work that thread is often descheduled: B = 1 forward went from about 2 ms to 88 ms (issue 12). S
    does not change with the thread count, so the S jobs of an image then run one after the other on
    the same thread, with bit-identical results.
    """
    threads = torch.get_num_threads()
    split = max(1, threads // max(batch, 1))
    if split > 1 and cores_busy():
        threads = max(1, batch)
    kernels().use_threads(threads)
    return split


@contextlib.contextmanager
def torch_threads(batch: int) -> Iterator[None]:
    """Run the torch ops inside (the similarity matmul, copies) on one thread when a batch smaller than
    torch's thread count meets a busy machine (:func:`cores_busy`), as :func:`numba_threads` does for the
    kernels; restore the thread count after. On two busy cores a two-thread matmul waits at its barrier
    for a thread the scheduler has parked: one time slice (tens of ms) for a 2 ms layer (issue 20 §5).
    Nothing changes when the machine is quiet or the batch fills the threads, and no number changes."""
    threads = torch.get_num_threads()
    if threads <= max(batch, 1) or not cores_busy():
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


_BUSY = {"t": -1.0, "busy": False}


def cores_busy() -> bool:
    """True when other work keeps this machine's cores busy: the 1-minute load average is at least one
    core above the core count (this process itself accounts for at most the core count). Read at most
    once a second. ``CSA_SPLIT_IMAGES=1`` / ``=0`` forces the answer to not busy / busy."""
    force = os.environ.get("CSA_SPLIT_IMAGES", "")
    if force:
        return force.lower() in ("0", "false", "no", "off")
    now = time.monotonic()
    if now - _BUSY["t"] > 1.0:
        try:
            load = os.getloadavg()[0]
        except (OSError, AttributeError):  # not available (Windows): assume a machine of our own
            load = 0.0
        _BUSY.update(t=now, busy=load >= (os.cpu_count() or 1) + 1)
    return _BUSY["busy"]


# --------------------------------------------------------------------------------------------------
# Scratch memory of the numba path
# --------------------------------------------------------------------------------------------------
_SCRATCH = threading.local()


def workspace(name: str, shape: tuple, dtype: torch.dtype) -> Tensor:
    """A per-thread scratch CPU tensor for the numba kernels' temporaries (never returned nor saved):
    reused across calls, grown when too small. Fresh multi-MB allocations cost page faults that
    took longer than the kernels themselves (3-4 ms per call at B = 1)."""
    key = (name, dtype)
    numel = 1
    for n in shape:
        numel *= n
    buf = getattr(_SCRATCH, "bufs", None)
    if buf is None:
        buf = _SCRATCH.bufs = {}
    if key not in buf or buf[key].numel() < numel:
        buf[key] = torch.empty(numel, dtype=dtype)
    return buf[key][:numel].view(shape)
