"""The package's import structure: no cycle, and every import points down the layer order below.

Every ``import`` of a ``csa_lib`` module counts, at module level and inside functions (a lazy import
still ties the two modules together; it only hides a cycle until the function runs). The imports are
read from the source with ``ast``, so nothing is imported here.
"""
import ast
from pathlib import Path

import pytest

import csa_lib

PACKAGE = Path(csa_lib.__file__).resolve().parent

#: The layer order, lowest first. A module may import modules of lower layers only: never one of its own
#: layer, never one above it. A new module gets a place here (the test names any module that has none).
LAYERS = [
    # no package imports: settings, one-line error messages, the CSA layer's compiled kernels
    ["__init__", "config", "errors", "_csa_kernels", "_csa_triton"],
    # low helpers: device names, run-folder files, the CSA layer's back-end plumbing
    ["devices", "runfiles", "_csa_backend"],
    # building blocks: masks, the synthetic copy task, the attention layers and the reading of their records
    ["masks", "copytask", "csa", "peers", "attention_maps"],
    # data, networks, torchrun plumbing, the VGG feature extractor, classical baselines (they use masks)
    ["data", "networks", "distributed", "vgg", "baselines"],
    # what is built on networks: losses, shipped weights, the official code's checkpoints, attention statistics
    ["losses", "pretrained", "official", "attention_stats"],
    # training
    ["train"],
    # evaluation and the public inference API (both load trained generators through train)
    ["metrics", "inference"],
    # experiments and figures
    ["ablation", "viz"],
    # front ends
    ["interactive", "cli"],
]
LAYER = {name: k for k, names in enumerate(LAYERS) for name in names}


def _modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py"))


def _package_imports(module: str) -> set[str]:
    """The ``csa_lib`` modules that ``module`` imports anywhere in its source (``from . import x``,
    ``from .x import y``, ``from csa_lib.x import y``, ``import csa_lib.x``, ``from csa_lib import x``).
    ``from . import name`` of something that is not a module (``__version__``) counts as ``__init__``."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(), filename=f"{module}.py")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "csa_lib":
                    found.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.ImportFrom):
            if node.level > 1:
                raise AssertionError(f"{module}: import beyond the package (level {node.level})")
            if node.level == 1:
                base = node.module
            elif (node.module or "").split(".")[0] == "csa_lib":
                base = node.module.partition(".")[2] or None
            else:
                continue
            if base:
                found.add(base.split(".")[0])
            else:  # from . import a, b  /  from csa_lib import a, b
                for alias in node.names:
                    found.add(alias.name if (PACKAGE / f"{alias.name}.py").is_file() else "__init__")
    found.discard(module)
    return found


GRAPH = {m: _package_imports(m) for m in _modules()}


def test_the_walker_sees_lazy_and_absolute_imports():
    assert "train" in GRAPH["metrics"]      # `from csa_lib.train import load_generator` inside a function
    assert "_csa_kernels" in GRAPH["_csa_backend"]  # `from csa_lib import _csa_kernels` inside a function
    assert "__init__" in GRAPH["cli"]       # `from . import __version__`
    assert "runfiles" in GRAPH["train"]


def test_every_module_has_a_layer():
    missing = sorted(set(GRAPH) - set(LAYER))
    assert not missing, f"modules without a place in tests/test_imports.py LAYERS: {missing}"
    gone = sorted(set(LAYER) - set(GRAPH))
    assert not gone, f"LAYERS names modules that do not exist: {gone}"


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(GRAPH.get(m, ())):
            if state.get(n) == 1:
                cycle = path[path.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("module", sorted(LAYER))
def test_imports_point_down_the_layers(module):
    if module not in GRAPH:
        pytest.skip(f"{module} does not exist")
    bad = sorted(n for n in GRAPH[module] if LAYER.get(n, len(LAYERS)) >= LAYER[module])
    assert not bad, (f"csa_lib.{module} (layer {LAYER[module]}) imports {bad} (layers "
                     f"{[LAYER.get(n) for n in bad]}): an import must point to a lower layer; move the shared "
                     "code down (or the importing code up) instead of hiding the import in a function")


def test_moved_names_stay_importable_where_they_were():
    """Run-folder I/O moved from train to runfiles, resolve_device to devices, error_line from cli to errors,
    sha256_file from pretrained to runfiles, the CSA back-end plumbing to _csa_backend: notebooks, tests and
    scripts import these names from their old homes. viz keeps the attention runner (now in attention_stats)
    for benchmarks/face_attention.py."""
    from csa_lib import runfiles
    from csa_lib.cli import NO_CODE, TORCH_ADVICE, error_line  # noqa: F401
    from csa_lib.csa import available_chains  # noqa: F401
    from csa_lib.pretrained import sha256_file
    from csa_lib.train import (CKPT_DIR, LAST, LOCK_FILE, NEXT, PREV, TEMP_NAME, RunInUseError,  # noqa: F401
                               RunLock, atomic_save, checkpoint_candidates, finish_interrupted_save, first_line,
                               has_checkpoint, load_checkpoint, read_log, remove_orphan_temps, resolve_device)

    assert RunLock is runfiles.RunLock and load_checkpoint is runfiles.load_checkpoint
    assert sha256_file is runfiles.sha256_file
    from csa_lib import attention_stats, viz
    assert not hasattr(viz, "run_with_attention_input")  # analysis lives in attention_stats; viz only draws
    assert callable(attention_stats.run_with_attention_input)
