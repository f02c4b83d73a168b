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
