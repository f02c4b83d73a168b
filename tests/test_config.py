import json

import pytest

from csa_lib.config import PRESETS, Preset, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name):
    p = get_preset(name)
    q = Preset.from_dict(json.loads(json.dumps(p.to_dict())))
    assert q == p


def test_override_and_errors():
    p = get_preset("smoke", **{"train.steps": 7, "model.base_channels": 4})
    assert p.train.steps == 7 and p.model.base_channels == 4
    assert get_preset("smoke").train.steps != 7  # presets are fresh copies
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("nope")
    with pytest.raises(ValueError, match="unknown setting"):
        get_preset("smoke", **{"train.nope": 1})


def test_image_sizes_agree():
    for name in PRESETS:
        p = get_preset(name)
        assert p.data.image_size == p.model.image_size


def test_notebook_profile_from_the_environment(monkeypatch):
    import torch

    from csa_lib.config import notebook_profile

    monkeypatch.delenv("CSA_SMOKE", raising=False)
    monkeypatch.delenv("CSA_PROFILE", raising=False)
    assert notebook_profile() == ("full" if torch.cuda.is_available() else "smoke")
    for name in ("smoke", "laptop", "full"):
        monkeypatch.setenv("CSA_PROFILE", name)
        assert notebook_profile() == name
    monkeypatch.setenv("CSA_PROFILE", " Laptop ")  # case and spaces from a shell are forgiven
    assert notebook_profile() == "laptop"
    monkeypatch.setenv("CSA_SMOKE", "1")  # tests and CI: smoke wins over everything
    assert notebook_profile() == "smoke"
    monkeypatch.delenv("CSA_SMOKE")
    monkeypatch.setenv("CSA_PROFILE", "huge")
    with pytest.raises(ValueError, match="CSA_PROFILE='huge'"):
        notebook_profile()


def test_every_environment_variable_the_library_reads_is_documented_in_config():
    """config's docstring lists every ``CSA_*`` variable read anywhere in csa_lib (issue 22: one place)."""
    import re
    from pathlib import Path

    import csa_lib
    from csa_lib import config

    package = Path(csa_lib.__file__).resolve().parent
    read = {name for path in package.glob("*.py")
            for name in re.findall(r"""(?:environ\.get\(|environ\[|getenv\()\s*["'](CSA_\w+)["']""", path.read_text())}
    assert read >= {"CSA_SMOKE", "CSA_KILL_AT"}  # the pattern finds them
    missing = sorted(name for name in read if f"``{name}" not in config.__doc__)
    assert not missing, f"read by csa_lib but not documented in config.py's docstring: {missing}"


# ---- validation: each section checks its own fields, at construction and after every override -------
from csa_lib import config  # noqa: E402
from csa_lib.config import DataConfig, LossConfig, ModelConfig, TrainConfig, apply_override  # noqa: E402

BAD = [  # (section class, field, bad value, the start of the one-line message)
    (DataConfig, "layout", "zip", "data.layout must be one of folder, celeba, places2, paris, copytask, got 'zip'"),
    (DataConfig, "resize", "stretch", "data.resize must be one of square, center_crop"),
    (DataConfig, "masks", "stars", "data.masks must be one of center, rect, irregular, folder"),
    (DataConfig, "image_size", 0, "data.image_size must be a positive integer, got 0"),
    (DataConfig, "hole_size", -3, "data.hole_size must be a positive integer"),
    (DataConfig, "num_workers", -1, "data.num_workers must be an integer >= 0, got -1"),
    (ModelConfig, "image_size", 48, "model.image_size must be a power of two >= 16"),
    (ModelConfig, "base_channels", 0, "model.base_channels must be an integer in [1, 512]"),
    (ModelConfig, "base_channels", 100_000, "model.base_channels must be an integer in [1, 512]"),
    (ModelConfig, "csa_semantics", "cosine", "model.csa_semantics must be one of paper, official, got 'cosine'"),
    (ModelConfig, "csa_backward", "true", "model.csa_backward must be one of autograd, official"),
    (ModelConfig, "attention", "transformer", "model.attention must be one of csa, identity, contextual, shift"),
    (ModelConfig, "contextual_ksize", 0, "model.contextual_ksize must be a positive integer"),
    (LossConfig, "mode", "fancy", "loss.mode must be one of paper, official"),
    (LossConfig, "consistency", "paper", "loss.consistency must be one of paper_sum, hole_mean"),
    (TrainConfig, "batch_size", 0, "train.batch_size must be a positive integer, got 0"),
    (TrainConfig, "steps", -1, "train.steps must be a positive integer, got -1"),
    (TrainConfig, "num_samples", 0, "train.num_samples must be a positive integer"),
    (TrainConfig, "keep_every", 0, "train.keep_every must be a positive integer"),
    (TrainConfig, "lr", 0.0, "train.lr must be a positive number"),
    (TrainConfig, "lr", float("nan"), "train.lr must be a positive number"),
    (TrainConfig, "decay_start", -1, "train.decay_start must be None or a step >= 0"),
    (TrainConfig, "time_budget_s", -1.0, "train.time_budget_s must be None or >= 0 seconds"),
    (TrainConfig, "amp", "fp16", "train.amp must be one of auto, bf16, off, fp32, got 'fp16'"),
]
SECTION = {DataConfig: "data", ModelConfig: "model", LossConfig: "loss", TrainConfig: "train"}


@pytest.mark.parametrize("cls, field, value, message", BAD, ids=[f"{SECTION[c]}.{f}={v!r}" for c, f, v, _ in BAD])
def test_a_section_refuses_a_bad_value_when_built_and_when_overridden(cls, field, value, message):
    with pytest.raises(ValueError) as built:
        cls(**{field: value})
    assert str(built.value).startswith(message) and "\n" not in str(built.value)
    preset = get_preset("smoke")
    before = getattr(getattr(preset, SECTION[cls]), field)
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[").replace("(", r"\(")):
        apply_override(preset, f"{SECTION[cls]}.{field}", value)
    assert getattr(getattr(preset, SECTION[cls]), field) == before  # the preset is left as it was
    with pytest.raises(ValueError, match="^" + SECTION[cls] + r"\." + field):
        get_preset("smoke", **{f"{SECTION[cls]}.{field}": value})
    setattr(getattr(preset, SECTION[cls]), field, value)  # a direct assignment: Preset.validate sees it
    with pytest.raises(ValueError, match="^" + SECTION[cls] + r"\." + field):
        preset.validate()


def test_every_allowed_value_is_accepted_and_none_where_optional():
    for layout in config.LAYOUTS:
        for resize in config.RESIZES:
            for masks in config.MASK_KINDS:
                DataConfig(layout=layout, resize=resize, masks=masks)
    for attention in config.ATTENTIONS:
        for semantics in config.CSA_SEMANTICS:
            for backward in config.CSA_BACKWARDS:
                ModelConfig(attention=attention, csa_semantics=semantics, csa_backward=backward)
    for mode in config.LOSS_MODES:
        for variant in config.CONSISTENCY_VARIANTS:
            LossConfig(mode=mode, consistency=variant)
    for amp in config.AMP_MODES:
        TrainConfig(amp=amp)
    TrainConfig(keep_every=None, decay_start=None, time_budget_s=None)
    DataConfig(hole_size=None, num_workers=0)
    ModelConfig(base_channels=config.MAX_BASE_CHANNELS)


def test_one_list_of_allowed_values_read_by_the_modules_and_the_command():
    """The modules that act on a setting, and the csa command's choices, use config's tuples."""
    from csa_lib import cli, csa, losses, networks, train

    assert networks.ATTENTIONS is config.ATTENTIONS
    assert csa.SEMANTICS is config.CSA_SEMANTICS and csa.BACKWARDS is config.CSA_BACKWARDS
    assert losses.CONSISTENCY_VARIANTS is config.CONSISTENCY_VARIANTS
    assert train.AMP_MODES is config.AMP_MODES and train.MAX_BASE_CHANNELS is config.MAX_BASE_CHANNELS
    actions = {a.dest: a for p in cli.build_parser()._subparsers._group_actions[0].choices.values()
               for a in p._actions}
    assert tuple(actions["amp"].choices) == config.AMP_MODES
    assert tuple(actions["semantics"].choices) == config.CSA_SEMANTICS


def test_the_csa_semantics_are_checked_with_one_rule_everywhere(tmp_path):
    """The layer, the official-checkpoint loader and the config refuse an unknown semantics alike."""
    from csa_lib.csa import CoherentSemanticAttention
    from csa_lib.official import load_official_checkpoint

    for make in (lambda: CoherentSemanticAttention("cosine"), lambda: ModelConfig(csa_semantics="cosine"),
                 lambda: load_official_checkpoint(tmp_path, semantics="cosine")):
        with pytest.raises(ValueError, match="semantics must be one of paper, official, got 'cosine'"):
            make()
