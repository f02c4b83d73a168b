"""The lines that would break (or misbehave) on a CUDA machine, each checked on the CPU.

No GPU is needed: device propagation is checked with the ``meta`` device or a spy, the Triton failures
with a stand-in kernel module, CUDA-only switches by asking for them with a ``cuda`` device object.
"""
import sys
import types
import warnings

import pytest
import torch
from torch import nn

import csa_lib
from csa_lib import _csa_backend, attention_maps, attention_stats, config, csa, networks, train
from csa_lib.config import get_preset, missing_files, notebook_preset
from csa_lib.csa import CoherentSemanticAttention
from csa_lib.train import Trainer, cuda_speed_flags, resolve_device


# ---- attention maps and the runner: devices -------------------------------------------------------
def test_offsets_from_sources_builds_its_positions_on_the_source_device(monkeypatch):
    seen = []
    arange = torch.arange

    def spy(*args, **kwargs):  # records where each position vector is made
        seen.append(kwargs.get("device"))
        return arange(*args, **kwargs)

    monkeypatch.setattr(torch, "arange", spy)
    source = torch.tensor([-1, 0, -1, 1])
    off = attention_maps.offsets_from_sources(source, (2, 2))
    assert seen and all(d == source.device for d in seen)  # a CUDA source gets CUDA positions
    assert off[:, 0, 1].tolist() == [0.0, -1.0] and off[:, 1, 1].tolist() == [-1.0, 0.0]


class _RecordingGenerator(nn.Module):
    """Just enough of a CSAInpainter for run_with_attention_input: one attention layer in
    refine_net.levels, parameters on some device, and a forward that records its inputs' devices."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        level = nn.Module()
        level.attention = networks.make_attention("identity", 3)
        self.refine_net = nn.Module()
        self.refine_net.levels = nn.ModuleList([level])
        self.seen = {}

    def forward(self, image, mask, return_attention=False):
        self.seen = {"image": image.device, "mask": mask.device, "weight": self.weight.device}
        hole = mask[:, :, ::8, ::8] > 0.5
        return self.refine_net.levels[0].attention(image[:, :, ::8, ::8] * self.weight, hole)


def test_run_with_attention_input_moves_cpu_inputs_to_the_generator_device():
    G = _RecordingGenerator().to("meta")  # stands in for a model on the GPU
    image, mask = torch.zeros(1, 3, 32, 32), torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    with pytest.raises(RuntimeError, match="meta"):
        G(image, mask)  # what the old code did: CPU inputs into a model elsewhere
    out, feats, hole = attention_stats.run_with_attention_input(G, image, mask)
    assert G.seen == {"image": torch.device("meta"), "mask": torch.device("meta"),
                      "weight": torch.device("meta")}
    assert feats.device.type == "meta" and hole.device.type == "meta"


# ---- config: the smoke preset's device, the notebooks' preset choice -----------------------------
def test_smoke_preset_picks_the_gpu_when_there_is_one(monkeypatch):
    assert get_preset("smoke").train.device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(get_preset("smoke").train.device).type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(get_preset("smoke").train.device).type == "cpu"


@pytest.fixture
def fake_shared(monkeypatch, tmp_path):
    """SHARED_ROOT pointing at an empty folder; returns a function that creates one needed path."""
    monkeypatch.setattr(config, "SHARED_ROOT", tmp_path)

    def make(kind):
        if kind == "vgg":
            (tmp_path / "weights").mkdir(exist_ok=True)
            (tmp_path / "weights" / "vgg16_caffe_rgb_conv1-4_fp16.pth").write_bytes(b"x")
        else:
            (tmp_path / "data" / kind).mkdir(parents=True, exist_ok=True)
    return make


def test_notebook_preset_needs_data_masks_and_vgg_for_celeba64(fake_shared, capsys):
    assert len(missing_files(get_preset("celeba64"))) == 3
    fake_shared("celeba_10k")
    fake_shared("nvidia_masks_256")
    p = notebook_preset("celeba64", "demo", **{"train.steps": 5})
    assert p.name == "demo" and p.train.steps == 5     # the VGG file is missing: no celeba64
    assert "VGG16 weights" in capsys.readouterr().out
    fake_shared("vgg")
    assert missing_files(get_preset("celeba64")) == []
    p = notebook_preset("celeba64", "demo", **{"train.steps": 5})
    assert p.name == "celeba64" and p.train.steps == 5


def test_no_loader_workers_inside_a_jupyter_kernel(fake_shared, monkeypatch, tmp_path):
    for kind in ("celeba_10k", "nvidia_masks_256", "vgg"):
        fake_shared(kind)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    assert not config.in_jupyter()
    assert notebook_preset("celeba64").data.num_workers == 4
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    assert config.in_jupyter()
    assert notebook_preset("celeba64").data.num_workers == 0
    # ... and a notebook that builds its preset by hand gets no workers from the trainer either
    preset = get_preset("smoke", **{"data.num_workers": 2, "train.device": "cpu", "train.tensorboard": False,
                                    "train.out_dir": str(tmp_path / "run")})
    trainer = Trainer(preset, vgg=_random_vgg(), progress=False)
    assert trainer.loader().num_workers == 0
    monkeypatch.delitem(sys.modules, "ipykernel")
    assert trainer.loader().num_workers == 2


def _random_vgg():
    from csa_lib.vgg import VGG16Features

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return VGG16Features("none")


# ---- train: CUDA speed flags scoped to the steps -----------------------------------------------------
@pytest.fixture
def plain_flags():
    """Known, non-default-for-training flags before the test; the originals restored after it."""
    before = torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()
    torch.backends.cudnn.benchmark = False
    torch.set_float32_matmul_precision("highest")
    yield
    torch.backends.cudnn.benchmark = before[0]
    torch.set_float32_matmul_precision(before[1])


def _flags():
    return torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()


def test_cuda_speed_flags_are_scoped_and_restored_even_on_error(plain_flags):
    with cuda_speed_flags(torch.device("cpu")):
        assert _flags() == (False, "highest")            # nothing changes off CUDA
    with pytest.raises(KeyError):
        with cuda_speed_flags(torch.device("cuda")):
            assert _flags() == (True, "high")
            raise KeyError("a failing step")
    assert _flags() == (False, "highest")


def test_trainer_sets_no_process_wide_flags_and_scopes_them_to_each_step(plain_flags, monkeypatch, tmp_path):
    preset = get_preset("smoke", **{"train.tensorboard": False, "train.out_dir": str(tmp_path / "run")})
    monkeypatch.setattr(train, "resolve_device", lambda name: torch.device("cuda"))
    try:  # without a GPU this fails while moving the models; with one it builds a CUDA trainer
        Trainer(preset, vgg=_random_vgg(), progress=False)
    except (RuntimeError, AssertionError):
        pass
    assert _flags() == (False, "highest")                # the old trainer switched both on here, for good
    monkeypatch.undo()
    trainer = Trainer(get_preset("smoke", **{"train.device": "cpu", "train.tensorboard": False,
                                             "train.out_dir": str(tmp_path / "cpu")}),
                      vgg=_random_vgg(), progress=False)
    inside = []
    trainer.device = torch.device("cuda")                # what a CUDA trainer's step does with the flags
    monkeypatch.setattr(trainer, "_train_step", lambda image, mask: inside.append(_flags()) or {})
    trainer.train_step(None, None)
    assert inside == [(True, "high")] and _flags() == (False, "highest")


# ---- csa: Triton import and first-launch failures ---------------------------------------------------
def test_a_broken_triton_import_warns_once_and_names_the_error(monkeypatch):
    monkeypatch.setattr(_csa_backend, "_TRITON", None)
    monkeypatch.delattr(csa_lib, "_csa_triton", raising=False)
    monkeypatch.delitem(sys.modules, "csa_lib._csa_triton", raising=False)
    for name in ("triton", "triton.language"):   # a triton build that breaks at import, not an ImportError
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    with pytest.warns(RuntimeWarning, match=r"Triton chain is unavailable \(AttributeError: .*jit"):
        assert _csa_backend.triton() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # once: no second warning
        assert _csa_backend.triton() is None
        assert csa.available_chains(torch.device("cuda")) == ["torch"]


class CompilationError(Exception):
    """Stands in for triton.compiler.errors.CompilationError."""


def _torch_chain_forward(k, g, s, count, paper, neps, geps):
    """The Triton module's chain_forward contract, computed by the torch chain (padding: m = 0)."""
    valid = torch.arange(k.shape[1]) < count[:, None]
    m, d, a, b = csa._chain_torch(*csa._sanitise_padding(k, g, s, valid), valid, paper)
    return m * valid[..., None], d, a, b


def _fail(*args, **kwargs):
    raise CompilationError("at 12:4: unsupported")


@pytest.fixture
def stand_in_triton(monkeypatch):
    """A Triton kernel module the test controls, picked by chain="auto" on the CPU (no numba, interpreter
    on), with a fresh first-launch record."""
    module = types.SimpleNamespace(chain_forward=_torch_chain_forward, chain_backward=_fail)
    monkeypatch.setattr(_csa_backend, "_TRITON", module)
    monkeypatch.setattr(_csa_backend, "_TRITON_LAUNCHED", set())
    monkeypatch.setattr(_csa_backend, "kernels", lambda: None)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert csa.available_chains("cpu") == ["torch", "triton"]
    return module


def _inputs(gen, B=3, C=6, H=5, W=6):
    x = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64)
    hole = torch.zeros(B, 1, H, W, dtype=torch.bool)
    hole[0, :, 1:3, 2:5] = True                          # every image its own mask and its own T
    hole[1, :, 3:, :2] = True
    hole[2, :, 0, 0] = True
    return x, hole


@pytest.mark.parametrize("semantics", ["paper", "official"])
def test_triton_failure_at_first_forward_launch_falls_back_to_the_torch_chain(stand_in_triton, gen, semantics):
    stand_in_triton.chain_forward = _fail
    x, hole = _inputs(gen)
    with pytest.warns(RuntimeWarning, match=r"first forward launch \(CompilationError: at 12:4"):
        y, att = CoherentSemanticAttention(semantics)(x, hole, return_attention=True)
    want, att_want = CoherentSemanticAttention(semantics, chain="torch")(x, hole, return_attention=True)
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    torch.testing.assert_close(att.a, att_want.a, rtol=0, atol=0)
    assert csa.available_chains("cpu") == ["torch"]      # off for the rest of the process


@pytest.mark.parametrize("semantics", ["paper", "official"])
def test_triton_failure_at_first_backward_launch_gives_the_true_gradient(stand_in_triton, gen, semantics):
    x, hole = _inputs(gen)
    w = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    xb = x.clone().requires_grad_()
    with pytest.warns(RuntimeWarning, match=r"first backward launch \(CompilationError"):
        (CoherentSemanticAttention(semantics)(xb, hole) * w).sum().backward()
    want = x.clone().requires_grad_()
    (CoherentSemanticAttention(semantics, chain="torch")(want, hole) * w).sum().backward()
    torch.testing.assert_close(xb.grad, want.grad, rtol=1e-10, atol=1e-12)


def test_a_failure_after_a_successful_launch_is_not_swallowed(stand_in_triton, gen):
    calls = []

    def flaky(*args):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return _torch_chain_forward(*args)

    stand_in_triton.chain_forward = flaky
    x, hole = _inputs(gen)
    layer = CoherentSemanticAttention()
    with torch.no_grad():
        layer(x, hole)
        with pytest.raises(RuntimeError, match="illegal memory access"):
            layer(x, hole)
