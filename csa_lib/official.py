"""Checkpoints of the official CSA code (KumapowerLIU/CSA-inpainting) in csa_lib, and back.

The official training saves each network's state dict as ``<epoch>_net_<label>.pth`` in its checkpoint
folder (``torch.save(net.cpu().state_dict(), ...)``, no ``module.`` prefix), with

- ``G``: the refinement net (``unet_csa``, 6 input channels)      -> :class:`~csa_lib.networks.RefineNet`
- ``P``: the coarse net (``unet_256``)                             -> :class:`~csa_lib.networks.CoarseNet`
- ``D``: the 70x70 PatchGAN (``NLayerDiscriminator``)              -> :class:`~csa_lib.networks.PatchDiscriminator`
- ``F``: the feature discriminator on VGG16 pool3 (``PFDiscriminator``) -> :class:`~csa_lib.networks.FeaturePatchDiscriminator`

    >>> G = load_official_checkpoint("checkpoints/CSA_inpainting", epoch=30)     # doctest: +SKIP
    >>> out = G(image, mask)       # image [B,3,256,256] in [-1,1], mask [B,1,256,256] float, 1 = hole

Why the names differ. The official U-Nets are nested blocks built from the inside out: every block is one
``nn.Sequential`` called ``model`` whose items are ``[down layers, the inner block, up layers]``, so a key
spells the path through the nesting (``model.model.1.model.6.model.6.model.8...``). csa_lib keeps the same
layers in flat lists (``levels[i].down``, ``levels[i].up``, ...). Each official conv or norm maps to exactly
one of ours with the same shape; which one is decided by its position in its block, written down in
:data:`COARSE_BLOCK`, :data:`REFINE_BLOCK` and :data:`REFINE_CSA_BLOCK` (``docs/method.md``, "Architecture",
describes both layouts; ``tests/test_official.py`` argues why the mapped network computes the same
function). The CSA layer and the two consistency-loss taps (``InnerCos``) hold no weights.

The mapping is generated from the structure of a csa_lib model, so it also names models of other sizes
the way the official code would name a U-Net with that many levels; the official code itself always
builds 8 levels, i.e. ``image_size=256`` here.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import CSA_SEMANTICS, ModelConfig, Preset, check_choice, get_preset
from .networks import CSAInpainter, FeaturePatchDiscriminator, PatchDiscriminator
from .runfiles import atomic_save

__all__ = ["OfficialCheckpointError", "LABELS", "official_module_names", "to_official_state_dicts",
           "from_official_state_dicts", "load_official_checkpoint", "official_files",
           "import_official", "official_preset"]

#: official file label -> what it holds.
LABELS = {"G": "refinement net", "P": "coarse net", "D": "image discriminator", "F": "feature discriminator"}

#: Official number of U-Net levels (``define_G(..., 8, ...)``): 256 px down to 1x1.
OFFICIAL_IMAGE_SIZE = 256

# Position of each weighted layer inside one official block -> our module inside the matching level.
#: Coarse net, a middle block: ``[LReLU, conv4x4/2, IN, <inner block>, ReLU, tconv4x4/2, IN]``.
COARSE_BLOCK = {1: "down", 2: "down_norm", 5: "up", 6: "up_norm"}
COARSE_INNER = 3  # position of the inner block
#: Refinement net, a middle block:
#: ``[LReLU, conv4x4/2 dil 2, IN, LReLU, conv3x3, IN, <inner>, ReLU, tconv3x3, IN, ReLU, tconv4x4/2, IN]``.
REFINE_BLOCK = {1: "down.1", 2: "down.2", 4: "down.4", 5: "down_norm", 8: "up.1", 9: "up.2", 11: "up.4",
                12: "up.5"}
REFINE_INNER = 6
#: The refinement block that holds the CSA layer: after the 3x3 conv come ``[CSA, InnerCos]`` (no
#: weights) before the IN, and ``InnerCos2`` (no weights) before the decoder's first ReLU.
REFINE_CSA_BLOCK = {1: "down.1", 2: "down.2", 4: "down.4", 7: "down_norm", 11: "up.1", 12: "up.2",
                    14: "up.4", 15: "up.5"}
REFINE_CSA_INNER = 8


class OfficialCheckpointError(ValueError):
    """An official checkpoint file is missing, unreadable or does not fit (one line, names the file)."""


# ----------------------------------------------------------------------------------------------------
# The name mapping: official module path -> csa_lib module path
# ----------------------------------------------------------------------------------------------------
def _coarse_names(net: nn.Module) -> dict[str, str]:
    """Official ``unet_256`` module paths -> ``CoarseNet`` module paths (``n`` levels)."""
    n = len(net.down)
    # Outermost block: [conv4x4/2, <inner>, ReLU, tconv4x4/2, Tanh].
    names = {"model.model.0": "down.0", "model.model.3": f"up.{n - 1}.1"}
    path = "model.model.1"
    for i in range(1, n):
        up = f"up.{n - 1 - i}"  # our decoder runs from the inside out
        if i < n - 1:
            ours = {"down": f"down.{i}.1", "down_norm": f"down.{i}.2", "up": f"{up}.1", "up_norm": f"{up}.2"}
            names.update({f"{path}.model.{k}": ours[v] for k, v in COARSE_BLOCK.items()})
            path += f".model.{COARSE_INNER}"
        else:  # innermost: [LReLU, conv4x4/2, ReLU, tconv4x4/2, IN] (no norm at the 1x1 bottleneck)
            names.update({f"{path}.model.1": f"down.{i}.1", f"{path}.model.3": f"{up}.1",
                          f"{path}.model.4": f"{up}.2"})
    return names


def _refine_names(net: nn.Module) -> dict[str, str]:
    """Official ``unet_csa`` module paths -> ``RefineNet`` module paths."""
    # Outermost block: [conv3x3 (6 -> C), <inner>, ReLU, tconv3x3 (2C -> 3)] (no norm, no Tanh).
    names = {"model.model.0": "stem", "model.model.3": "head.1"}
    path = "model.model.1"
    for j, level in enumerate(net.levels):
        table, inner = ((REFINE_CSA_BLOCK, REFINE_CSA_INNER) if level.attention is not None
                        else (REFINE_BLOCK, REFINE_INNER))
        names.update({f"{path}.model.{k}": f"levels.{j}.{v}" for k, v in table.items()})
        path += f".model.{inner}"
    # Innermost: [LReLU, conv4x4/2 dil 2, ReLU, tconv4x4/2, IN].
    names.update({f"{path}.model.1": "inner_down.1", f"{path}.model.3": "inner_up.1",
                  f"{path}.model.4": "inner_up.2"})
    return names


def official_module_names(model: nn.Module) -> dict[str, str]:
    """``{official module path: our module path}`` for a csa_lib network (keys are without ``.weight``).

    ``model``: :class:`CSAInpainter` (official paths prefixed ``P:`` / ``G:``), ``CoarseNet``,
    ``RefineNet``, :class:`PatchDiscriminator` or :class:`FeaturePatchDiscriminator` (both already use the
    official ``model.<index>`` names).
    """
    if isinstance(model, CSAInpainter):
        return {**{f"P:{k}": f"coarse_net.{v}" for k, v in _coarse_names(model.coarse_net).items()},
                **{f"G:{k}": f"refine_net.{v}" for k, v in _refine_names(model.refine_net).items()}}
    kind = type(model).__name__
    if kind == "CoarseNet":
        return _coarse_names(model)
    if kind == "RefineNet":
        return _refine_names(model)
    if isinstance(model, (PatchDiscriminator, FeaturePatchDiscriminator)):
        return {m: m for m, _ in model.named_modules() if re.fullmatch(r"model\.\d+", m)}
    raise TypeError(f"no official names for a {kind}")


def _key_map(net: nn.Module, names: dict[str, str]) -> dict[str, str]:
    """``{official key: our key}`` covering every entry of ``net.state_dict()`` exactly once."""
    ours_to_official = {v: k for k, v in names.items()}
    keys = {}
    for key in net.state_dict():
        module, _, leaf = key.rpartition(".")
        if module not in ours_to_official:
            raise OfficialCheckpointError(f"{type(net).__name__} entry {key!r} has no official counterpart "
                                          "(only the CSA generator and the two discriminators have one)")
        keys[f"{ours_to_official[module]}.{leaf}"] = key
    return keys


def _official_order(key: str) -> tuple:
    # The official state dicts list keys depth-first in Sequential index order, weight before bias.
    leaf_rank = {"weight": 0, "bias": 1}
    return tuple((0, int(p)) if p.isdigit() else (1, leaf_rank.get(p, 2), p) for p in key.split("."))


def _net_key_maps(generator: CSAInpainter, image_D: nn.Module | None = None,
                  feature_D: nn.Module | None = None) -> dict[str, tuple[nn.Module, dict[str, str]]]:
    nets = {"G": generator.refine_net, "P": generator.coarse_net, "D": image_D, "F": feature_D}
    return {label: (net, _key_map(net, official_module_names(net)))
            for label, net in nets.items() if net is not None}


def to_official_state_dicts(generator: CSAInpainter, image_D: nn.Module | None = None,
                            feature_D: nn.Module | None = None) -> dict[str, dict[str, Tensor]]:
    """Our weights under the official names: ``{"G": {...}, "P": {...}}`` (plus ``"D"``/``"F"`` when the
    discriminators are given), each ordered as the official ``state_dict()`` lists them. Tensors are
    shared with the model (``.detach()``), not copied. A model with ``model.border_head`` is refused: the
    official networks have no place for the head, and dropping it would change the output."""
    if getattr(generator, "border_head", None) is not None:
        raise ValueError("this model has a border head (model.border_head), which the official code does not "
                         "have: its weights cannot be written under the official names")
    out = {}
    for label, (net, keys) in _net_key_maps(generator, image_D, feature_D).items():
        ours = net.state_dict()
        out[label] = {k: ours[keys[k]].detach() for k in sorted(keys, key=_official_order)}
    return out


def _fit(state: dict[str, Tensor], net: nn.Module, keys: dict[str, str], source: str, hint: str = "",
         prefix: str = "") -> None:
    """Load the official ``state`` into ``net`` through ``keys``; one-line errors naming key and source.
    ``hint`` is added to missing/unexpected-key errors, ``prefix`` to our key names in messages."""
    def more(items: list) -> str:
        return f" (and {len(items) - 1} more)" if len(items) > 1 else ""

    missing = [k for k in keys if k not in state]
    if missing:
        raise OfficialCheckpointError(f"{source}: missing key {missing[0]!r}{more(missing)}{hint}")
    unexpected = [k for k in state if k not in keys]
    if unexpected:
        raise OfficialCheckpointError(f"{source}: unexpected key {unexpected[0]!r}{more(unexpected)}{hint}")
    ours = net.state_dict()
    for k, v in state.items():
        if not isinstance(v, Tensor):
            raise OfficialCheckpointError(f"{source}: entry {k!r} is a {type(v).__name__}, not a tensor")
        want = ours[keys[k]]
        if tuple(v.shape) != tuple(want.shape):
            raise OfficialCheckpointError(f"{source}: key {k!r} has shape {tuple(v.shape)}, expected "
                                          f"{tuple(want.shape)} (csa_lib {prefix}{keys[k]})")
    # A net built on "meta" (shapes only) takes the tensors themselves; a real one copies them, so it
    # never shares storage with the caller's state dict.
    meta = any(t.is_meta for t in ours.values())
    net.load_state_dict({keys[k]: v.to(ours[keys[k]].dtype).contiguous() for k, v in state.items()},
                        strict=True, assign=meta)


def from_official_state_dicts(states: dict[str, dict[str, Tensor]], generator: CSAInpainter,
                              image_D: nn.Module | None = None, feature_D: nn.Module | None = None,
                              sources: dict[str, str] | None = None) -> None:
    """Load official-named state dicts (``{"G": ..., "P": ...[, "D": ..., "F": ...]}``) into our networks
    in place. Every official key must be consumed exactly once with a matching shape; errors name the key
    and ``sources[label]`` (the file)."""
    size = generator.cfg.image_size
    hint = (f" (the official nets have 8 levels, which csa_lib builds at image_size {OFFICIAL_IMAGE_SIZE}, "
            f"not {size})" if size != OFFICIAL_IMAGE_SIZE else "")
    for label, (net, keys) in _net_key_maps(generator, image_D, feature_D).items():
        source = (sources or {}).get(label, f"official {label} state dict")
        if label not in states:
            raise OfficialCheckpointError(f"no {LABELS[label]} ({label}) state dict given ({source})")
        prefix = {"G": "refine_net.", "P": "coarse_net."}.get(label, "")
        _fit(states[label], net, keys, source, hint if prefix else "", prefix)


# ----------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------
def _epochs(folder: Path) -> list[str]:
    found = {m.group(1) for p in folder.glob("*_net_G.pth") if (m := re.fullmatch(r"(.+)_net_G\.pth", p.name))}
    return sorted(found, key=lambda e: (not e.isdigit(), int(e) if e.isdigit() else 0, e))


def official_files(folder: str | Path, epoch: str | int = "latest",
                   labels: str = "GP") -> dict[str, Path]:
    """``{label: folder/<epoch>_net_<label>.pth}``. ``epoch="latest"`` takes ``latest_net_*.pth`` when
    present, else the highest numbered epoch (``train.ipynb`` saves only numbered epochs)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OfficialCheckpointError(f"official checkpoint folder not found: {folder}")
    epochs = _epochs(folder)
    epoch = str(epoch)
    if epoch == "latest" and not (folder / "latest_net_G.pth").is_file():
        numbered = [e for e in epochs if e.isdigit()]
        if not numbered:
            raise OfficialCheckpointError(f"no official checkpoint (<epoch>_net_G.pth) in {folder}")
        epoch = numbered[-1]
    files = {label: folder / f"{epoch}_net_{label}.pth" for label in labels}
    for label, path in files.items():
        if not path.is_file():
            raise OfficialCheckpointError(f"official checkpoint file not found: {path} (the {LABELS[label]}; "
                                          f"epochs in {folder}: {', '.join(epochs) or 'none'})")
    return files


def _read_state(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise OfficialCheckpointError(f"cannot read official checkpoint {path}: "
                                      f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None
    if not isinstance(state, dict):
        raise OfficialCheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from a DataParallel wrapper
    return state


def load_official_checkpoint(folder: str | Path, epoch: str | int = "latest", image_size: int = 256,
                             semantics: str = "official", with_discriminators: bool = False):
    """A :class:`CSAInpainter` (eval mode, CPU) with the weights of an official checkpoint folder.

    Reads ``<epoch>_net_G.pth`` and ``<epoch>_net_P.pth`` (and ``_D``, ``_F`` when
    ``with_discriminators``) with ``weights_only=True``; the width (``ngf``) is read from the coarse net's
    first conv. ``semantics``: the CSA layer's forward, ``"official"`` (exactly the official code's
    similarities, no guard) or ``"paper"`` (cosine similarities with the guard); the backward stays
    ``"autograd"`` (set ``model.cfg``/``ModelConfig.csa_backward`` to change it before training).
    Returns the generator, or ``(generator, image_D, feature_D)`` when ``with_discriminators``.
    Raises :class:`OfficialCheckpointError` (one line) naming the file and the missing, unexpected or
    mis-shaped key.
    """
    check_choice("semantics", semantics, CSA_SEMANTICS)
    files = official_files(folder, epoch, "GPDF" if with_discriminators else "GP")
    states = {label: _read_state(path) for label, path in files.items()}
    first = states["P"].get("model.model.0.weight")
    if not isinstance(first, Tensor) or first.dim() != 4:
        raise OfficialCheckpointError(f"{files['P']}: missing key 'model.model.0.weight' (the coarse net's "
                                      "first conv), is this a coarse-net (P) file?")
    cfg = ModelConfig(image_size=image_size, base_channels=int(first.shape[0]), csa_semantics=semantics)
    with torch.device("meta"):  # shapes only (no random init); the files' tensors are assigned below
        generator = CSAInpainter(cfg)
        image_D = PatchDiscriminator(cfg.base_channels) if with_discriminators else None
        feature_D = FeaturePatchDiscriminator(256, cfg.base_channels, image_size) if with_discriminators else None
    from_official_state_dicts(states, generator, image_D, feature_D,
                              sources={k: str(v) for k, v in files.items()})
    generator.eval()
    if with_discriminators:
        return generator, image_D.eval(), feature_D.eval()
    return generator


# ----------------------------------------------------------------------------------------------------
# Conversion to a csa_lib checkpoint (`csa import-official`)
# ----------------------------------------------------------------------------------------------------
def official_preset(model_cfg: ModelConfig) -> Preset:
    """The ``paper256`` preset with ``model_cfg`` and the official training settings written in
    (batch size 1, the official loss mode), named ``official-import``. It records how an imported model
    was trained; ``csa eval``/``csa inpaint`` read its model and data sections."""
    preset = get_preset("paper256")
    preset.name = "official-import"
    preset.model = model_cfg
    preset.data.image_size = model_cfg.image_size
    preset.data.hole_size = None  # the official 120/256 of the image side, at any size
    preset.loss.mode, preset.loss.consistency = "official", "official_mean"
    preset.train.batch_size = 1
    return preset


def import_official(folder: str | Path, output: str | Path, epoch: str | int = "latest",
                    image_size: int = 256, semantics: str = "official") -> dict[str, Any]:
    """Convert an official checkpoint folder to a csa_lib checkpoint file that ``load_generator``,
    ``csa inpaint`` and ``csa eval`` accept: ``{"generator", "preset", "step", "official"}``. ``step`` is 0
    (the official files do not record it); ``official`` names the source files and epoch. Returns the
    dict written (also with ``"path"``)."""
    files = official_files(folder, epoch)
    generator = load_official_checkpoint(folder, epoch, image_size=image_size, semantics=semantics)
    ckpt = {"generator": generator.state_dict(), "preset": official_preset(generator.cfg).to_dict(),
            "step": 0, "official": {"folder": str(Path(folder).resolve()),
                                    "epoch": files["G"].name[: -len("_net_G.pth")],
                                    "files": [p.name for p in files.values()]}}
    atomic_save(ckpt, output)
    return {**ckpt, "path": str(output)}
