"""One line for an error: what the ``csa`` command prints and what the library's own messages quote.

Pure standard library (no torch), so the command line can import it before anything heavy loads.
"""
from __future__ import annotations

import re

#: What ``torch.load(weights_only=True)`` says before its advice to retry unsafely; our message instead.
TORCH_ADVICE = "Weights only load failed"
NO_CODE = ("the file holds Python objects besides tensors, and they are never unpickled "
           "(loaded with weights_only=True for safety)")


def error_line(e: BaseException) -> str:
    """The one line printed for an expected error: its first non-empty line (the type name when empty),
    with PyTorch's advice to retry ``torch.load`` with ``weights_only=False`` replaced by :data:`NO_CODE`
    (that would run whatever code the file carries)."""
    text = str(e)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0] if lines else ("out of memory" if isinstance(e, MemoryError) else type(e).__name__)
    cut = line.find(TORCH_ADVICE)
    if cut < 0 and "weights_only" in line and "False" in line:  # the advice in other words
        cut = line.find("weights_only")
    if cut >= 0:
        found = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)", text)
        line = line[:cut] + NO_CODE + (f" (found {found.group(1)})" if found else "")
    return line


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name when the message is empty),
    without PyTorch's advice to retry ``torch.load`` with ``weights_only=False`` (see :func:`error_line`)."""
    return error_line(e)
