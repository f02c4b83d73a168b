"""Metrics against scikit-image, the Fréchet distance against scipy, and the evaluation protocol."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage import filters, transform
from skimage import metrics as skm

from conftest import shared_path
from csa_lib import metrics as M


def _photo(name: str, size: int = 64) -> np.ndarray:
    """A real photo from scikit-image as float64 [H, W, 3] in [0, 1]."""
    img = getattr(skdata, name)()
    return transform.resize(img, (size, size), anti_aliasing=True)


def _degraded(img: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    if kind == "noise":
        return np.clip(img + np.random.default_rng(seed).normal(0, 0.08, img.shape), 0, 1)
    return filters.gaussian(img, sigma=1.3, channel_axis=-1)


def _to_torch(batch: list[np.ndarray]) -> torch.Tensor:
    """[H, W, 3] in [0, 1] (float64 kept for exactness) -> [B, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2) * 2 - 1


PAIRS = [(name, kind) for name in ("astronaut", "coffee", "chelsea") for kind in ("noise", "blur")]


@pytest.fixture(scope="module")
def pairs():
    clean = [_photo(n) for n, _ in PAIRS]
    dirty = [_degraded(c, k, i) for i, (c, (_, k)) in enumerate(zip(clean, PAIRS))]
    return clean, dirty


def test_pixel_metrics_match_skimage(pairs):
    clean, dirty = pairs
    pred, target = _to_torch(dirty), _to_torch(clean)
    ref_mse = [skm.mean_squared_error(c, d) for c, d in zip(clean, dirty)]
    ref_psnr = [skm.peak_signal_noise_ratio(c, d, data_range=1) for c, d in zip(clean, dirty)]
    ref_l1 = [np.abs(c - d).mean() for c, d in zip(clean, dirty)]
    torch.testing.assert_close(M.l2(pred, target, "none"), torch.tensor(ref_mse, dtype=torch.float64),
                               rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(M.psnr(pred, target, "none"), torch.tensor(ref_psnr, dtype=torch.float64),
                               rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(M.l1(pred, target, "none"), torch.tensor(ref_l1, dtype=torch.float64),
                               rtol=1e-4, atol=1e-7)
    # "mean" is the average of the per-image values.
    assert M.psnr(pred, target).item() == pytest.approx(np.mean(ref_psnr), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ssim_matches_skimage(pairs, dtype):
    clean, dirty = pairs
    ref = [skm.structural_similarity(d, c, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=1, channel_axis=-1) for c, d in zip(clean, dirty)]
    got = M.ssim(_to_torch(dirty).to(dtype), _to_torch(clean).to(dtype), reduction="none")
    assert got.shape == (len(PAIRS),)
    torch.testing.assert_close(got.double(), torch.tensor(ref, dtype=torch.float64), rtol=0, atol=1e-4)
    # Different degradations give clearly different values, so the match above is not trivial.
    assert max(ref) - min(ref) > 0.05


def test_ssim_non_square_and_odd_sizes():
    img = transform.resize(skdata.astronaut(), (37, 52), anti_aliasing=True)
    other = _degraded(img, "noise", 3)
    ref = skm.structural_similarity(other, img, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=1, channel_axis=-1)
    assert M.ssim(_to_torch([other]), _to_torch([img])).item() == pytest.approx(ref, abs=1e-6)


def test_identical_images(gen):
    x = torch.rand(3, 3, 24, 24, generator=gen) * 2 - 1
    assert M.l1(x, x).item() == 0
    assert M.l2(x, x).item() == 0
    assert math.isinf(M.psnr(x, x).item())
    torch.testing.assert_close(M.ssim(x, x, "none"), torch.ones(3))


def test_values_are_clamped_to_the_image_range():
    target = torch.full((1, 3, 16, 16), 0.5)
    over = torch.full((1, 3, 16, 16), 3.0)  # clamps to 1.0 -> 0.25 error on the [0, 1] scale
    assert M.l1(over, target).item() == pytest.approx(0.25)
    assert M.l1(over, target, clamp=False).item() == pytest.approx(1.25)


def test_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        M.l1(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="at least 11x11"):
        M.ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="reduction"):
        M.l1(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), reduction="sum")


def test_composite_keeps_known_pixels(gen):
    image = torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1
    pred = torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1
    mask = (torch.rand(2, 1, 16, 16, generator=gen) > 0.6).float()
    out = M.composite(pred, image, mask)
    known, hole = (mask == 0).expand_as(image), (mask == 1).expand_as(image)
    assert torch.equal(out[known], image[known])
    assert torch.equal(out[hole], pred[hole])


# ---------------------------------------------------------------------------------------------- FID
def test_frechet_distance_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    d = 12
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    ref = ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2)).real
    assert M.frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-8)
    assert M.frechet_distance(m1, s1, m1, s1) == pytest.approx(0, abs=1e-8)


def test_frechet_distance_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s.
    assert M.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1)
    # Commuting (diagonal) covariances: sum of per-axis 1-D distances.
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 1.0])
    want = ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert M.frechet_distance(np.zeros(3), np.diag(v1), np.zeros(3), np.diag(v2)) == pytest.approx(want)


def test_frechet_distance_from_samples_with_singular_covariance(gen):
    # Fewer samples than dimensions (as in small FID runs): covariance is singular; result finite, >= 0.
    f1, f2 = torch.randn(5, 20, generator=gen), torch.randn(5, 20, generator=gen) + 1
    d = M.frechet_distance(*M.gaussian_stats(f1), *M.gaussian_stats(f2))
    assert math.isfinite(d) and d > 0
    assert M.frechet_distance(*M.gaussian_stats(f1), *M.gaussian_stats(f1)) == pytest.approx(0, abs=1e-9)


def test_fid_without_weights_raises_clear_error(tmp_path, monkeypatch):
    x = torch.zeros(2, 3, 32, 32)
    with pytest.raises(M.InceptionWeightsUnavailable, match="never downloads"):
        M.fid(x, x, weights=tmp_path / "missing.pth")
    # "auto" looks only at the env variable and torchvision's cache; point both at nothing.
    monkeypatch.delenv("CSA_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(M.InceptionWeightsUnavailable, match="inception_v3_google"):
        M.fid(x, x)


def test_load_inception_rejects_a_wrong_state_dict(tmp_path):
    path = tmp_path / "not_inception.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(M.InceptionWeightsUnavailable, match="not an Inception-v3"):
        M.load_inception(path)


def test_load_inception_from_local_state_dict(tmp_path):
    # Random weights stand in for the real ones (none here): this checks loading and the feature shape.
    tv = pytest.importorskip("torchvision")
    path = tmp_path / "inception_random.pth"
    torch.save(tv.models.inception_v3(weights=None, aux_logits=False, init_weights=False).state_dict(), path)
    model = M.load_inception(path)
    assert not model.training and isinstance(model.fc, torch.nn.Identity)
    assert M.inception_features(torch.zeros(1, 3, 32, 32), model).shape == (1, 2048)


def test_fid_is_frechet_distance_of_features(gen):
    # A cheap stand-in feature network (pooled pixels) checks fid()'s plumbing without Inception's cost.
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
    real = torch.rand(6, 3, 32, 32, generator=gen) * 2 - 1
    fake = torch.rand(6, 3, 32, 32, generator=gen) * 2 - 1
    feats, fake_feats = M.inception_features(real, net, batch_size=4), M.inception_features(fake, net)
    assert feats.shape == (6, 12) and feats.dtype == torch.float64
    want = M.frechet_distance(*M.gaussian_stats(feats), *M.gaussian_stats(fake_feats))
    assert want > 0
    assert M.fid(real, fake, model=net) == pytest.approx(want, rel=1e-9)
    assert M.fid(real, real, model=net) == pytest.approx(0, abs=1e-9)


# ------------------------------------------------------------------------------------------ protocol
def test_ratio_bins():
    for rows, label in [(0, "0-10%"), (1, "10-20%"), (3, "30-40%"), (5, "50-60%"), (10, "90-100%")]:
        mask = torch.zeros(1, 10, 10)
        mask[:, :rows] = 1  # rows * 10 % hole; a lower bin edge belongs to the bin above it
        assert M.hole_ratio_bin(mask) == label


def _row_mask(size: int, rows: int) -> torch.Tensor:
    m = torch.zeros(1, size, size)
    m[:, :rows] = 1
    return m


@pytest.fixture
def tiny_set(gen):
    """8 photos 16x16 with masks of known hole ratios: 3 in 10-20 %, 4 in 30-40 %, 1 in 50-60 %."""
    imgs = torch.rand(8, 3, 16, 16, generator=gen) * 2 - 1
    rows = [2, 3, 2, 5, 6, 5, 6, 9]  # 12.5, 18.8, 12.5, 31.3, 37.5, 31.3, 37.5, 56.3 %
    return [(imgs[i], _row_mask(16, r)) for i, r in enumerate(rows)]


def test_evaluate_perfect_generator(tiny_set):
    perfect = lambda image, mask: image  # noqa: E731  (cheats: sees the ground truth)
    for comp in (True, False):
        res = M.evaluate(perfect, tiny_set, batch_size=3, composite=comp, progress=False)
        assert res.n == 8 and res.output == ("composited" if comp else "raw")
        assert res.values["l1"].abs().max() == 0
        assert torch.isinf(res.values["psnr"]).all()
        torch.testing.assert_close(res.values["ssim"], torch.ones(8))


def test_evaluate_constant_generator_composited_vs_raw(tiny_set):
    grey = lambda image, mask: torch.zeros_like(image)  # noqa: E731  0.5 on the [0, 1] scale
    comp = M.evaluate(grey, tiny_set, batch_size=4, progress=False)
    raw = M.evaluate(grey, tiny_set, batch_size=4, composite=False, progress=False)
    for i, (image, mask) in enumerate(tiny_set):
        err = ((image + 1) / 2 - 0.5).abs()
        assert comp.values["l1"][i].item() == pytest.approx((err * mask).mean().item(), rel=1e-6)
        assert raw.values["l1"][i].item() == pytest.approx(err.mean().item(), rel=1e-6)
    assert (comp.values["psnr"] > raw.values["psnr"]).all()


def test_evaluate_bins_count_images(tiny_set):
    res = M.evaluate(lambda i, m: torch.zeros_like(i), tiny_set, batch_size=3, masks_by_bin="hole_ratio",
                     progress=False, masks="rows", split="tiny")
    summary = res.summary()
    assert list(summary) == ["10-20%", "30-40%", "50-60%", "all"]
    assert [summary[b]["n"] for b in summary] == [3, 4, 1, 8]
    # A bin's value is the mean over its images.
    idx = [i for i, b in enumerate(res.bins) if b == "30-40%"]
    assert summary["30-40%"]["l1"] == pytest.approx(res.values["l1"][idx].mean().item())
    # A callable binning works too; without binning there is only the "all" row.
    by_parity = M.evaluate(lambda i, m: i, tiny_set, masks_by_bin=lambda m: "odd" if m.sum() % 2 else "even",
                           progress=False)
    assert by_parity.summary()["even"]["n"] + by_parity.summary().get("odd", {"n": 0})["n"] == 8
    assert list(M.evaluate(lambda i, m: i, tiny_set, progress=False).summary()) == ["all"]


def test_evaluate_inpaint_output_stage_and_max_images(tiny_set):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, image, mask):
            assert not self.training  # evaluate() switches to eval mode
            return SimpleNamespace(refined=image, coarse=torch.zeros_like(image))

    net = Net().train()
    res = M.evaluate(net, tiny_set, batch_size=3, max_images=5, progress=False)
    assert net.training  # mode restored
    assert res.n == 5 and res.stage == "refined" and res.values["l1"].abs().max() == 0
    coarse = M.evaluate(net, tiny_set, stage="coarse", progress=False)
    assert coarse.stage == "coarse" and coarse.values["l1"].min() > 0
    with pytest.raises(TypeError, match="no field"):
        M.evaluate(lambda i, m: SimpleNamespace(x=i), tiny_set, progress=False)


def test_results_table_format(tiny_set):
    a = M.evaluate(lambda i, m: i, tiny_set, masks_by_bin="hole_ratio", progress=False, masks="rows",
                   split="tiny")
    b = M.evaluate(lambda i, m: torch.zeros_like(i), tiny_set, masks_by_bin="hole_ratio", progress=False,
                   masks="rows", split="tiny")
    table = M.results_table({"perfect": a, "grey": b})
    lines = table.splitlines()
    assert lines[0].startswith("| model | bin | N |")
    assert "| perfect | 30-40% | 4 |" in table and "| grey | all | 8 |" in table
    assert "inf" in table  # perfect PSNR
    assert "Output: composited; masks: rows; split: tiny." in table
    assert len([ln for ln in lines if ln.startswith("| grey")]) == 4
    # Results that differ in output get it as a column instead of a caption.
    raw = M.evaluate(lambda i, m: i, tiny_set, composite=False, progress=False)
    mixed = M.results_table({"c": a, "r": raw})
    assert "| output |" in mixed.splitlines()[0] and "raw" in mixed
    assert M.results_table(a).splitlines()[2].startswith("| model | 10-20% | 3 |")


def test_evaluate_on_fixed_eval_masks_is_reproducible():
    # The protocol: build_dataset(cfg, "eval") draws sample i's mask from eval_seed, so two evaluations
    # (two models, two sessions) score the same holes and give the same numbers for the same generator.
    from csa_lib.config import get_preset
    from csa_lib.data import build_dataset

    cfg = get_preset("smoke").data
    blur = lambda image, mask: torch.nn.functional.avg_pool2d(image, 3, 1, 1)  # noqa: E731
    runs = [M.evaluate(blur, build_dataset(cfg, "eval"), batch_size=16, masks_by_bin="hole_ratio",
                       progress=False, masks=M.describe_masks(cfg)) for _ in range(2)]
    assert runs[0].bins == runs[1].bins
    for k in M.METRICS:
        assert torch.equal(runs[0].values[k], runs[1].values[k])
    assert runs[0].n == len(build_dataset(cfg, "eval"))
    assert runs[0].masks.startswith("rect 10%-40%")


def test_evaluate_with_fid_feature_network(tiny_set):
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())  # cheap stand-in
    grey = lambda image, mask: torch.zeros_like(image)  # noqa: E731
    res = M.evaluate(grey, tiny_set, batch_size=3, progress=False, fid=net)
    image, mask = (torch.stack(v) for v in zip(*tiny_set))
    assert res.extra["fid"] == pytest.approx(M.fid(image, M.composite(torch.zeros_like(image), image, mask),
                                                   model=net), rel=1e-9)
    assert M.evaluate(lambda i, m: i, tiny_set, progress=False, fid=net).extra["fid"] == pytest.approx(0, abs=1e-9)
    table = M.results_table({"grey": res})
    assert "| FID |" in table.splitlines()[0]
    assert table.splitlines()[2].endswith(f"| {res.extra['fid']:.2f} |")
    with pytest.raises(M.InceptionWeightsUnavailable):
        M.evaluate(grey, tiny_set, progress=False, fid="/nonexistent/inception.pth")


@pytest.fixture
def smoke_checkpoint(tmp_path):
    """A real trainer checkpoint of untrained smoke models whose eval split holds 6 images."""
    from csa_lib.config import get_preset
    from csa_lib.train import Trainer

    preset = get_preset("smoke", **{"train.out_dir": str(tmp_path / "run"), "data.eval_range": (0, 6)})
    return Trainer(preset, progress=False).save(tmp_path / "ckpt.pt"), preset


@pytest.mark.filterwarnings("ignore:VGG16 with RANDOM weights")
def test_evaluate_checkpoint_round_trip(smoke_checkpoint, tmp_path):
    # evaluate_checkpoint = load_generator + evaluate on the preset's eval split (fixed masks).
    from csa_lib.data import build_dataset
    from csa_lib.train import load_generator

    path, preset = smoke_checkpoint
    res = M.evaluate_checkpoint(path, batch_size=4, progress=False)
    assert res.n == 6 and res.output == "composited" and set(res.bins) <= {"10-20%", "20-30%", "30-40%", "40-50%"}
    assert res.split == "embedded scikit-image photos at 32 px, 6 images"
    generator, _ = load_generator(path)
    want = M.evaluate(generator, build_dataset(preset.data, "eval"), progress=False)
    torch.testing.assert_close(res.values["psnr"], want.values["psnr"])
    raw = M.evaluate_checkpoint(path, composite=False, max_images=3, progress=False)
    assert raw.n == 3 and raw.output == "raw" and (raw.values["l1"] > res.values["l1"][:3]).all()
    with pytest.raises(FileNotFoundError, match="mask_dir"):
        M.evaluate_checkpoint(path, mask_dir=tmp_path / "nope", progress=False)


@pytest.mark.shared_data
@pytest.mark.filterwarnings("ignore:VGG16 with RANDOM weights")
def test_evaluate_checkpoint_with_nvidia_mask_folder(smoke_checkpoint):
    masks = shared_path("data", "nvidia_masks_256")
    path, _ = smoke_checkpoint
    res = M.evaluate_checkpoint(path, mask_dir=masks, progress=False)
    assert res.n == 6 and res.masks.startswith("folder nvidia_masks_256")
    assert all(b in {f"{10 * k}-{10 * k + 10}%" for k in range(10)} for b in res.bins)
    again = M.evaluate_checkpoint(path, mask_dir=masks, progress=False)
    assert res.bins == again.bins and torch.equal(res.values["l1"], again.values["l1"])  # fixed masks
