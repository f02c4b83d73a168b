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
