"""Official checkpoints (KumapowerLIU/CSA-inpainting) load into csa_lib: ``csa_lib.official``.

Why the mapping makes our network compute what the official network computes
-----------------------------------------------------------------------------
The official generators are U-Nets built from nested blocks. A block is one ``nn.Sequential`` named
``model``: ``[down layers, inner block, up layers]``; a non-outermost block returns
``cat([model(x), x])`` (its output first, then its own input as the skip). csa_lib keeps the same layers
in flat per-level lists and concatenates ``[level.up(x), skip]`` in the same order. Block by block
(``docs/method.md``, "Architecture"):

- coarse net (``unet_256``; ours ``CoarseNet``): outermost ``[conv4x4/2, inner, ReLU, tconv4x4/2, Tanh]``
  = our ``down[0]`` and ``up[-1]``; a middle block ``[LReLU, conv4x4/2, IN, inner, ReLU, tconv4x4/2, IN]``
  = our ``down[i] = (LReLU, conv, IN)`` and ``up[n-1-i] = (ReLU, tconv, IN)``; the innermost
  ``[LReLU, conv4x4/2, ReLU, tconv4x4/2, IN]`` (no norm at 1x1) = our ``down[n-1]`` and ``up[0]``.
  Same kernel sizes, strides, paddings, channel counts, LeakyReLU slope 0.2, affine InstanceNorm with
  eps 1e-5 and no running statistics, Tanh at the end.
- refinement net (``unet_csa``; ours ``RefineNet``): outermost ``[conv3x3 (6 -> C), inner, ReLU,
  tconv3x3 (2C -> 3)]`` = our ``stem`` and ``head`` (no norm, no Tanh); a middle block ``[LReLU,
  conv4x4/2 dilation 2 padding 3, IN, LReLU, conv3x3, IN, inner, ReLU, tconv3x3, IN, ReLU, tconv4x4/2, IN]``
  = our ``levels[j].down``, ``down_norm``, ``up``; the block at 1/8 resolution inserts ``[CSA layer,
  InnerCos]`` between its 3x3 conv and that IN and ``InnerCos2`` before its decoder's first ReLU: the
  InnerCos layers return their input unchanged (they only record a loss) and hold no weights, and the CSA
  layer holds none either, so only the positions shift (``REFINE_CSA_BLOCK``).
- the discriminators already use the official layout and names (``model.<index>``).
- in-place activations: the official LeakyReLU at the start of a block overwrites the block input, which
  is later concatenated as the skip, so the official skip is LReLU(x) where ours is x. The concatenation
  only ever feeds a ReLU, and ReLU(LReLU(x)) = ReLU(x) exactly, so the results are identical.

So with each official tensor put into the layer at the same position, the coarse net computes the same
floating-point operations in the same order (bit for bit), and so does the refinement net around the CSA
layer, whose own agreement with the official forward (up to float rounding, ``semantics="official"``) is
tested in ``tests/test_csa.py``. :func:`test_forward_matches_official_layout` checks this argument
numerically against nets built here in the official nested layout, and :func:`test_key_table` checks
every official key name, shape and order against the list of the official files' entries.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from csa_lib.cli import main
from csa_lib.config import SHARED_ROOT, ModelConfig
from csa_lib.networks import CSAInpainter, build_models, fill_hole
from csa_lib.official import (OfficialCheckpointError, from_official_state_dicts, import_official,
                              load_official_checkpoint, official_files, to_official_state_dicts)
from csa_lib.train import load_generator

TABLE = Path(__file__).parent / "data" / "official_keys_256.tsv"
SHARED_TABLE = SHARED_ROOT / "official_checkpoint_keys.txt"
SMALL = ModelConfig(image_size=64, base_channels=8, csa_semantics="official")


def read_table(path: Path) -> dict[str, list[tuple[str, str, str]]]:
    """{label: [(key, shape, dtype), ...]} from our embedded table or the shared official list."""
    out: dict[str, list] = {}
    label = None
    for line in path.read_text().splitlines():
        if line.startswith("## "):  # shared list: "## latest_net_G.pth: 122 entries"
            label = line.split()[1].split("_net_")[1][0]
        elif line.strip() and not line.startswith("#"):
            parts = line.split("\t")
            if len(parts) == 4:  # embedded table: label first
                label, parts = parts[0], parts[1:]
            out.setdefault(label, []).append(tuple(parts))
    return out


def randomize(*nets: nn.Module, seed: int = 0) -> None:
    """Distinct random values in every entry (norm weights around 1), so a swapped key shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for net in nets:
            for name, p in net.named_parameters():
                base = 1.0 if (p.dim() == 1 and name.endswith("weight")) else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))


def save_official(folder: Path, states: dict, epoch="3") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for label, state in states.items():
        torch.save(state, folder / f"{epoch}_net_{label}.pth")


@pytest.fixture
def small_folder(tmp_path):
    """An official-format folder (epoch 3) written from a random small csa_lib model; returns (folder, nets)."""
    nets = build_models(SMALL)
    randomize(*nets)
    save_official(tmp_path / "ckpt", to_official_state_dicts(*nets))
    return tmp_path / "ckpt", nets


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ----------------------------------------------------------------------------------------------------
# Names and shapes at the official size
# ----------------------------------------------------------------------------------------------------
def test_key_table():
    """Our 256-px, width-64 nets under official names: every key, shape, dtype and the order of the
    official state dicts, as in the embedded table (and the shared list of the real files, when present)."""
    with torch.device("meta"):
        nets = build_models(ModelConfig(image_size=256, base_channels=64))
    ours = {label: [(k, str(tuple(v.shape)), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()]
            for label, sd in to_official_state_dicts(*nets).items()}
    table = read_table(TABLE)
    assert {k: len(v) for k, v in table.items()} == {"G": 122, "P": 58, "D": 16, "F": 6}
    assert ours == table
    if SHARED_TABLE.is_file():
        assert read_table(SHARED_TABLE) == table


def test_full_size_load(tmp_path):
    """Official-format files at 256 px / width 64 load; every entry lands in exactly one of our tensors."""
    nets = build_models(ModelConfig(image_size=256, base_channels=64))
    states = to_official_state_dicts(*nets)
    save_official(tmp_path, states, epoch="20")
    G, D, F = load_official_checkpoint(tmp_path, epoch=20, with_discriminators=True)
    assert G.cfg.csa_semantics == "official" and G.cfg.base_channels == 64 and not G.training
    for src, dst in zip(nets, (G, D, F)):
        assert_same_state(src, dst)
    # Bijection: as many of our entries as official keys, and no official tensor used twice.
    n_ours = sum(len(m.state_dict()) for m in (G, D, F))
    assert n_ours == sum(len(s) for s in states.values()) == 202
    ptrs = {t.data_ptr() for m in (G, D, F) for t in m.state_dict().values()}
    assert len(ptrs) == n_ours


# ----------------------------------------------------------------------------------------------------
# Round trip and equivalence with the official layout (small sizes)
# ----------------------------------------------------------------------------------------------------
def test_round_trip():
    """ours -> official names -> a fresh model: identical weights, no storage shared with the source."""
    src = build_models(SMALL)
    randomize(*src, seed=1)
    dst = build_models(SMALL)
    from_official_state_dicts(to_official_state_dicts(*src), *dst)
    for a, b in zip(src, dst):
        assert_same_state(a, b)
    assert dst[0].refine_net.stem.weight.data_ptr() != src[0].refine_net.stem.weight.data_ptr()


class Block(nn.Module):
    """A block in the official layout: ``model = Sequential(layers)``; ``cat([model(x), x])`` unless outermost."""

    def __init__(self, layers: list[nn.Module], outermost: bool = False):
        super().__init__()
        self.model, self.outermost = nn.Sequential(*layers), outermost

    def forward(self, x):
        y = self.model(x)
        return y if self.outermost else torch.cat([y, x], 1)


class Top(nn.Module):
    def __init__(self, block: Block):
        super().__init__()
        self.model = block

    def forward(self, x):
        return self.model(x)


class WithHole(nn.Module):
    """Our CSA layer with a fixed feature-resolution hole (the official layer keeps its mask inside)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer, self.hole = layer, None

    def forward(self, x):
        return self.layer(x, self.hole)


def lrelu():
    return nn.LeakyReLU(0.2, inplace=True)  # in place, as the official blocks use it


def relu():
    return nn.ReLU(inplace=True)


def official_layout_coarse(n: int, C: int) -> Top:
    """``unet_256`` generalised to ``n`` levels, built in the official nesting from docs/method.md."""
    ch = [min(C * 2**i, 8 * C) for i in range(n)]
    IN = lambda c: nn.InstanceNorm2d(c, affine=True)  # noqa: E731
    block = Block([lrelu(), nn.Conv2d(ch[n - 2], ch[n - 1], 4, 2, 1), relu(),
                   nn.ConvTranspose2d(ch[n - 1], ch[n - 2], 4, 2, 1), IN(ch[n - 2])])
    for i in range(n - 2, 0, -1):
        block = Block([lrelu(), nn.Conv2d(ch[i - 1], ch[i], 4, 2, 1), IN(ch[i]), block, relu(),
                       nn.ConvTranspose2d(2 * ch[i], ch[i - 1], 4, 2, 1), IN(ch[i - 1])])
    return Top(Block([nn.Conv2d(3, ch[0], 4, 2, 1), block, relu(), nn.ConvTranspose2d(2 * ch[0], 3, 4, 2, 1),
                      nn.Tanh()], outermost=True))


def official_layout_refine(n: int, C: int, csa: nn.Module) -> Top:
    """``unet_csa`` generalised to ``n`` levels (CSA block at level 3), in the official nesting."""
    IN = lambda c: nn.InstanceNorm2d(c, affine=True)  # noqa: E731
    block = Block([lrelu(), nn.Conv2d(8 * C, 8 * C, 4, 2, 3, dilation=2), relu(),
                   nn.ConvTranspose2d(8 * C, 8 * C, 4, 2, 1), IN(8 * C)])
    for i in range(n - 1, 0, -1):
        c_in = C * 2 ** min(i - 1, 3)
        c_out = 2 * c_in if i <= 3 else c_in
        down = [lrelu(), nn.Conv2d(c_in, c_in, 4, 2, 3, dilation=2), IN(c_in), lrelu(),
                nn.Conv2d(c_in, c_out, 3, 1, 1)]
        up = [relu(), nn.ConvTranspose2d(2 * c_out, c_in, 3, 1, 1), IN(c_in), relu(),
              nn.ConvTranspose2d(c_in, c_in, 4, 2, 1), IN(c_in)]
        if i == 3:  # [.., conv3x3, CSA, InnerCos, IN, inner, InnerCos2, ReLU, ..]
            block = Block(down + [csa, nn.Identity(), IN(c_out), block, nn.Identity()] + up)
        else:
            block = Block(down + [IN(c_out), block] + up)
    return Top(Block([nn.Conv2d(6, C, 3, 1, 1), block, relu(), nn.ConvTranspose2d(2 * C, 3, 3, 1, 1)],
                     outermost=True))


def test_forward_matches_official_layout():
    """Weights in the official layout -> our nets through the mapping: same outputs (coarse bit for bit)."""
    from csa_lib.masks import feature_mask
    from csa_lib.networks import make_attention

    n, C, S = 6, SMALL.base_channels, SMALL.image_size
    assert 2**n == S
    P = official_layout_coarse(n, C)
    csa = WithHole(make_attention("csa", 8 * C, "official"))
    G = official_layout_refine(n, C, csa)
    randomize(P, G, seed=2)
    ours = build_models(SMALL)[0]
    from_official_state_dicts({"P": P.state_dict(), "G": G.state_dict()}, ours)

    g = torch.Generator().manual_seed(3)
    image = torch.rand(2, 3, S, S, generator=g) * 2 - 1
    mask = torch.zeros(2, 1, S, S)
    mask[0, :, 16:48, 16:48] = 1
    mask[1, :, 8:40, 24:56] = 1
    with torch.no_grad():
        out = ours(image, mask)
        coarse = P(fill_hole(image, mask))
        assert torch.equal(out.coarse, coarse)
        x6 = ours.refine_input(image, mask, out.coarse)
        refined = []
        for b in range(2):  # the official layer holds one mask: one image at a time
            csa.hole = out.feature_hole[b:b + 1]
            refined.append(G(x6[b:b + 1]))
    assert out.feature_hole.sum() > 0 and (~out.feature_hole).sum() > 0
    torch.testing.assert_close(out.refined, torch.cat(refined), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Errors: one line, naming the file and the key
# ----------------------------------------------------------------------------------------------------
def _error(folder, **kw) -> str:
    with pytest.raises(OfficialCheckpointError) as e:
        load_official_checkpoint(folder, image_size=SMALL.image_size, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_bad_keys(small_folder):
    folder, _ = small_folder
    path = folder / "3_net_G.pth"
    good = torch.load(path, weights_only=True)

    state = dict(good)
    del state["model.model.3.bias"]
    torch.save(state, path)
    msg = _error(folder)
    assert str(path) in msg and "missing key 'model.model.3.bias'" in msg

    torch.save({**good, "model.model.9.weight": torch.zeros(1)}, path)
    msg = _error(folder)
    assert str(path) in msg and "unexpected key 'model.model.9.weight'" in msg

    torch.save({**good, "model.model.0.weight": torch.zeros(8, 6, 5, 5)}, path)
    msg = _error(folder)
    assert str(path) in msg and "'model.model.0.weight' has shape (8, 6, 5, 5), expected (8, 6, 3, 3)" in msg
    assert "refine_net.stem.weight" in msg

    path.write_bytes(b"not a torch file")
    msg = _error(folder)
    assert f"cannot read official checkpoint {path}" in msg


def test_bad_files(small_folder, tmp_path):
    folder, _ = small_folder
    assert f"official checkpoint folder not found: {tmp_path / 'nowhere'}" in _error(tmp_path / "nowhere")
    msg = _error(folder, epoch=7)
    assert f"file not found: {folder / '7_net_G.pth'}" in msg and "epochs in" in msg and ": 3" in msg
    (folder / "3_net_F.pth").unlink()
    msg = _error(folder, with_discriminators=True)
    assert f"file not found: {folder / '3_net_F.pth'}" in msg and "feature discriminator" in msg
    # latest: the highest numbered epoch when there is no latest_net_*.pth
    assert official_files(folder)["G"].name == "3_net_G.pth"


def test_wrong_image_size(small_folder):
    folder, _ = small_folder
    with pytest.raises(OfficialCheckpointError) as e:
        load_official_checkpoint(folder, image_size=128)
    msg = str(e.value)
    assert "key" in msg and "8 levels" in msg and "image_size 256, not 128" in msg


# ----------------------------------------------------------------------------------------------------
# csa import-official -> load_generator / csa inpaint / csa eval's loader
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("semantics", ["official", "paper"])
def test_import_official_cli(small_folder, tmp_path, semantics, capsys):
    from PIL import Image

    folder, (G, _, _) = small_folder
    out = tmp_path / "imported.pt"
    assert main(["import-official", str(folder), "--epoch", "3", "--image-size", "64",
                 "--semantics", semantics, "-o", str(out)]) == 0
    loaded, preset = load_generator(out)  # what `csa inpaint` and `csa eval` call
    assert preset.model.csa_semantics == semantics and preset.model.base_channels == 8
    assert loaded.cfg.image_size == 64 and not loaded.training
    assert_same_state(G, loaded)

    img, mask = tmp_path / "img.png", tmp_path / "mask.png"
    rng = torch.Generator().manual_seed(4)
    Image.fromarray((torch.rand(64, 64, 3, generator=rng) * 255).byte().numpy()).save(img)
    m = torch.zeros(64, 64, dtype=torch.uint8)
    m[20:44, 20:44] = 255
    Image.fromarray(m.numpy()).save(mask)
    assert main(["inpaint", str(img), str(mask), "--checkpoint", str(out), "-o", str(tmp_path / "filled.png"),
                 "-q"]) == 0
    filled = torch.from_numpy(np.asarray(Image.open(tmp_path / "filled.png").convert("RGB")).copy())
    source = torch.from_numpy(np.asarray(Image.open(img)).copy())
    known = torch.from_numpy(m.numpy() == 0)
    assert torch.equal(filled[known], source[known])  # only the hole was filled

    capsys.readouterr()
    assert main(["eval", str(out), "--max-images", "2", "--batch-size", "2", "-q"]) == 0
    report = capsys.readouterr().out
    assert "composited" in report and "2 images" in report


def test_import_official_function(small_folder, tmp_path):
    folder, _ = small_folder
    ckpt = import_official(folder, tmp_path / "x.pt", image_size=64)
    assert ckpt["official"]["epoch"] == "3" and ckpt["step"] == 0
    assert ckpt["preset"]["loss"]["mode"] == "official" and ckpt["preset"]["train"]["batch_size"] == 1


def test_cli_error_is_one_line(tmp_path, capsys):
    assert main(["import-official", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "official checkpoint folder not found" in err
    assert not (tmp_path / "x.pt").exists()


def test_a_border_head_model_is_refused_in_the_official_format():
    G = CSAInpainter(ModelConfig(image_size=32, base_channels=8, border_head=True))
    with pytest.raises(ValueError, match="border head"):
        to_official_state_dicts(G)
