"""Trained weights that ship with the repository, and how to load and export them.

A shipped model is two files in ``weights/`` (a wheel installs them as ``csa_lib/weights/``, see
:data:`WEIGHTS_DIR`):

- ``<file>.pt``: the generator's state dict only (no optimiser, no discriminators), stored as float16
  to halve the size; loaded with ``torch.load(..., weights_only=True)`` and cast back to float32;
- ``<file>.json``: the model card: the :class:`~csa_lib.config.ModelConfig` that rebuilds the network,
  the pre-processing the network expects, the training command and budget, the evaluation table, the
  licence, and the file's sha256, which :func:`load_pretrained` checks before it reads a byte of it.

    >>> from csa_lib.pretrained import list_pretrained, load_pretrained
    >>> list_pretrained()                                   # doctest: +SKIP
    ['celeba64']
    >>> G = load_pretrained("celeba64")                     # doctest: +SKIP
    >>> out = G(image, mask)     # image [B,3,64,64] in [-1,1], mask [B,1,64,64] float, 1 = hole

The returned :class:`~csa_lib.networks.CSAInpainter` is in eval mode and carries the card as
``G.card`` (a dict).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .config import REPO_ROOT, ModelConfig, Preset
from .networks import CSAInpainter
from .runfiles import atomic_save, load_checkpoint, sha256_file  # noqa: F401  (sha256_file: also public here)

#: ``weights/`` of a source checkout (also what an editable install reads).
CHECKOUT_WEIGHTS = REPO_ROOT / "weights"
#: The same files inside an installed wheel: pyproject.toml maps ``weights/`` to the package data
#: ``csa_lib/weights/`` (every ``*.pt``, ``*.json`` and ``*.md`` in it), so ``pip install .`` ships them.
PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "weights"

#: Where the shipped weights and their model cards live: the installed package's copy when there is
#: one (a non-editable install, where ``REPO_ROOT`` is site-packages), else the checkout's ``weights/``.
WEIGHTS_DIR = PACKAGED_WEIGHTS if PACKAGED_WEIGHTS.is_dir() else CHECKOUT_WEIGHTS

#: name -> card file name in :data:`WEIGHTS_DIR` (the card names the weights file).
PRETRAINED = {"celeba64": "csa_celeba64.json",
              # the copy task (csa_lib.copytask, the twin task at 128 px, where attention is necessary): CSA
              # trained with the attention curriculum and its ablation twin without attention (notebook 10)
              "copytask": "csa_copytask.json", "copytask_identity": "csa_copytask_identity.json"}


class PretrainedError(RuntimeError):
    """A shipped model is missing, corrupt or inconsistent with its card (the message names the file)."""


class PretrainedFileNotFound(PretrainedError, FileNotFoundError):
    """A shipped model's card or weights file is not where it should be (the message names the path)."""


def list_pretrained(available_only: bool = False) -> list[str]:
    """The names :func:`load_pretrained` knows; ``available_only`` keeps those whose files are present."""
    names = sorted(PRETRAINED)
    if available_only:
        names = [n for n in names if (WEIGHTS_DIR / PRETRAINED[n]).is_file()]
    return names


def read_card(name: str = "celeba64", weights_dir: str | Path | None = None) -> dict[str, Any]:
    """The model card (a dict) of shipped model ``name``."""
    if name not in PRETRAINED:
        raise PretrainedError(f"unknown pretrained model {name!r}; available: {', '.join(list_pretrained())}")
    card_path = Path(weights_dir or WEIGHTS_DIR) / PRETRAINED[name]
    if not card_path.is_file():
        raise PretrainedFileNotFound(f"model card not found: {card_path} (shipped models are read from weights/ "
                                     "of a checkout, or from csa_lib/weights/ of an installed package)")
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as e:
        raise PretrainedError(f"cannot read model card {card_path}: {e}") from None
    for key in ("file", "sha256", "model"):
        if key not in card:
            raise PretrainedError(f"model card {card_path} has no {key!r} entry")
    card["card_path"] = str(card_path)
    return card


def load_pretrained(name: str = "celeba64", device: str | torch.device = "cpu",
                    weights_dir: str | Path | None = None):
    """The shipped generator ``name`` as a :class:`~csa_lib.networks.CSAInpainter` in eval mode.

    Checks the weights file's sha256 against the card, loads it with ``weights_only=True``, builds the
    network from the card's model config and loads the (float16) weights as float32. Errors name the file.
    """
    card = read_card(name, weights_dir)
    path = Path(card["card_path"]).parent / card["file"]
    if not path.is_file():
        raise PretrainedFileNotFound(f"weights file not found: {path} (named by {card['card_path']})")
    digest = sha256_file(path)
    if digest != card["sha256"]:
        raise PretrainedError(f"weights file {path} is corrupt or was changed: sha256 {digest[:16]}... "
                              f"does not match the card's {card['sha256'][:16]}...")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise PretrainedError(f"cannot read weights file {path}: {str(e).splitlines()[0]}") from None
    model = CSAInpainter(ModelConfig(**card["model"]))
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as e:
        raise PretrainedError(f"weights file {path} does not fit the card's model: "
                              f"{str(e).splitlines()[0]}") from None
    model.card = {k: v for k, v in card.items() if k != "card_path"}
    return model.to(device).eval()


def export_generator(checkpoint: str | Path, weights_path: str | Path,
                     card: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a training checkpoint's generator as a shipped model: fp16 weights and a JSON card.

    ``weights_path`` ends in ``.pt``; the card goes beside it with ``.json``. ``card`` adds fields
    (training command, metrics, licence ...). Returns the card written.
    """
    ckpt = load_checkpoint(checkpoint)
    preset = Preset.from_dict(ckpt["preset"])
    weights_path = Path(weights_path)
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in ckpt["generator"].items()}
    atomic_save(half, weights_path)
    out = {"name": weights_path.stem, **(card or {}),
           "file": weights_path.name, "sha256": sha256_file(weights_path),
           "size_bytes": weights_path.stat().st_size, "dtype": "float16",
           "model": preset.to_dict()["model"],
           "preprocessing": {k: preset.to_dict()["data"][k] for k in ("image_size", "resize", "crop_top")},
           "trained_steps": int(ckpt["step"]),
           "images_seen": int(ckpt["step"]) * preset.train.batch_size,
           "training_time_s": round(float(ckpt.get("elapsed_s", 0.0)), 1),
           "preset": preset.to_dict()}
    weights_path.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    return out
