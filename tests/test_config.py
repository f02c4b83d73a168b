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
