"""VGG16 feature taps: shapes, frozen weights, weight specs, conventions, offline error."""
import hashlib
import warnings

import pytest
import torch

from csa_lib import vgg as vgg_mod
from csa_lib.vgg import (VGG16Features, VGGWeights, VGGWeightsUnavailable, caffe_to_torchvision, load_vgg16,
                         parse_spec, read_state_dict)
from conftest import shared_path


@pytest.fixture(scope="module")
def random_vgg():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return VGG16Features("none")


def test_taps_shapes_and_frozen(random_vgg, gen):
    img = torch.rand(2, 3, 32, 48, generator=gen) * 2 - 1
    out = random_vgg(img)
    assert out["pool3"].shape == (2, 256, 4, 6)
    assert out["relu4_3"].shape == (2, 512, 4, 6)
    assert (out["relu4_3"] >= 0).all()
    assert not any(p.requires_grad for p in random_vgg.parameters())
    random_vgg.train()
    assert not random_vgg.training


def test_gradient_flows_to_input_not_weights(random_vgg, gen):
    img = (torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1).requires_grad_()
    random_vgg(img, taps=("pool3",))["pool3"].sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    assert all(p.grad is None for p in random_vgg.parameters())


def test_unknown_tap_raises(random_vgg):
    with pytest.raises(ValueError, match="relu5_3"):
        random_vgg(torch.zeros(1, 3, 32, 32), taps=("relu5_3",))


def test_none_warns_loudly():
    with pytest.warns(UserWarning, match="RANDOM"):
        w = load_vgg16("none")
    assert w.state_dict is None


def test_parse_spec():
    assert parse_spec("/a/b.pth") == ("/a/b.pth", "torchvision")
    assert parse_spec("/a/b.pth:caffe") == ("/a/b.pth", "caffe")
    assert parse_spec("C:/w/b.pth:torchvision") == ("C:/w/b.pth", "torchvision")
    with pytest.warns(UserWarning, match=":caffe"):
        parse_spec("/a/vgg_caffe.pth")


def _save_random(tmp_path, blocks_only=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sd = VGG16Features("none").state_dict()
    if not blocks_only:  # a torchvision-like file with extra keys
        sd["classifier.0.weight"] = torch.zeros(2, 2)
    path = tmp_path / "vgg.pth"
    torch.save({k: v.half() for k, v in sd.items()}, path)
    return path


def test_local_file_roundtrip_float32(tmp_path, gen):
    path = _save_random(tmp_path, blocks_only=False)
    m = VGG16Features(f"{path}:torchvision")
    assert m.convention == "torchvision" and str(path) in m.source
    assert all(p.dtype == torch.float32 for p in m.parameters())
    sd = read_state_dict(path)
    torch.testing.assert_close(m.features[21].weight, sd["features.21.weight"])


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_vgg16(str(tmp_path / "nope.pth") + ":caffe")
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, bad)
    with pytest.raises(ValueError, match="bad.pth.*missing keys"):
        load_vgg16(f"{bad}:torchvision")


def test_caffe_and_torchvision_conventions_agree(tmp_path, gen):
    """The same weights loaded as 'caffe' and converted to 'torchvision' see the same image alike."""
    path = _save_random(tmp_path)
    caffe = VGG16Features(f"{path}:caffe")
    tv = VGG16Features(VGGWeights(caffe_to_torchvision(read_state_dict(path)), "torchvision", "converted"))
    img = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    # conv1_1 + relu: exact away from the 1-pixel border (zero padding means different colours there).
    a = caffe.features[:2](vgg_mod.preprocess(img, "caffe"))
    b = tv.features[:2](vgg_mod.preprocess(img, "torchvision"))
    torch.testing.assert_close(a[..., 1:-1, 1:-1], b[..., 1:-1, 1:-1], rtol=1e-4, atol=1e-4)
    assert (a - b).abs().max() > 0  # the border effect is real, so the check above is not vacuous
    fa, fb = caffe(img), tv(img)
    for tap in ("pool3", "relu4_3"):
        rel = (fa[tap] - fb[tap]).norm() / fa[tap].norm()
        assert rel < 5e-3, (tap, rel)


def test_wrong_convention_differs(tmp_path, gen):
    """Guard for the test above: using the wrong preprocessing does change the features a lot."""
    path = _save_random(tmp_path)
    img = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
    fa = VGG16Features(f"{path}:caffe")(img)["relu4_3"]
    fb = VGG16Features(f"{path}:torchvision")(img)["relu4_3"]
    assert (fa - fb).norm() / fa.norm() > 0.1


def test_shared_caffe_file_conventions_agree(gen):
    path = shared_path("weights", "vgg16_caffe_rgb_conv1-4_fp16.pth")
    sd = read_state_dict(path)
    caffe = VGG16Features(VGGWeights(sd, "caffe", "shared"))
    tv = VGG16Features(VGGWeights(caffe_to_torchvision(sd), "torchvision", "converted"))
    img = torch.rand(1, 3, 64, 64, generator=gen) * 2 - 1
    fa, fb = caffe(img)["relu4_3"], tv(img)["relu4_3"]
    assert (fa - fb).norm() / fa.norm() < 5e-3


def test_torchvision_offline_raises_with_guidance(tmp_path, monkeypatch):
    """No cache and no network: a clear VGGWeightsUnavailable saying how to provide weights."""
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def offline():
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(vgg_mod, "_download_torchvision_state_dict", offline)
    assert not vgg_mod.torchvision_cache_file().exists()
    with pytest.raises(VGGWeightsUnavailable) as err:
        load_vgg16("torchvision")
    msg = str(err.value)
    assert "CSA_VGG_WEIGHTS" in msg and ":caffe" in msg and "internet" in msg and str(tmp_path) in msg


def test_auto_prefers_env_then_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    path = _save_random(tmp_path)
    monkeypatch.setenv("CSA_VGG_WEIGHTS", f"{path}:caffe")
    w = load_vgg16("auto")
    assert w.convention == "caffe" and str(path) in w.source
    monkeypatch.delenv("CSA_VGG_WEIGHTS")
    monkeypatch.setattr(vgg_mod, "SHARED_VGG_FILE", tmp_path / "absent.pth")
    with pytest.warns(UserWarning, match="RANDOM"):
        w = load_vgg16("auto")
    assert w.state_dict is None


def test_torchvision_cache_is_used(tmp_path, monkeypatch):
    """A file in torchvision's cache is loaded by 'torchvision' and preferred by 'auto' (no download)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    cache = vgg_mod.torchvision_cache_file()
    cache.parent.mkdir(parents=True)
    path = _save_random(tmp_path, blocks_only=False)
    # The file name carries the start of its SHA-256 (as torchvision's vgg16-397923af.pth does): checked.
    cache = cache.with_name(f"vgg16-{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}.pth")
    path.rename(cache)
    monkeypatch.setattr(vgg_mod, "torchvision_cache_file", lambda: cache)
    monkeypatch.setenv("CSA_VGG_WEIGHTS", "/nonexistent.pth:caffe")  # must not be reached
    for spec in ("torchvision", "auto"):
        w = load_vgg16(spec)
        assert w.convention == "torchvision" and str(cache) in w.source
        assert set(w.state_dict) == set(read_state_dict(cache))
