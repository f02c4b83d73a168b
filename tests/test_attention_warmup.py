"""The attention curriculum (train.attention_warmup_steps), networks.swap_attention and the freeze alias."""
import pytest
import torch

from csa_lib.config import ModelConfig, get_preset
from csa_lib.csa import CoherentSemanticAttention
from csa_lib.networks import ATTENTION_INPUT_PREFIXES, CSAInpainter, swap_attention
from csa_lib.peers import ContextualAttention
from csa_lib.train import Trainer, frozen_parameters


def _layer(G):
    return next(lv.attention for lv in G.refine_net.levels if lv.attention is not None)


def _preset(tmp_path, **extra):
    return get_preset("copytask", **{"train.device": "cpu", "train.steps": 4, "train.attention_warmup_steps": 2,
                                     "train.batch_size": 2, "train.out_dir": str(tmp_path / "run"),
                                     "train.tensorboard": False, "train.ckpt_every": 1, "train.sample_every": 100,
                                     "model.image_size": 64, "data.image_size": 64, "model.base_channels": 8,
                                     "train.log_every": 1, **extra})


def test_swap_attention_changes_the_layer_not_the_weights():
    G = CSAInpainter(ModelConfig(image_size=64, base_channels=8)).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    m = torch.zeros(2, 1, 64, 64)
    m[..., 16:40, 16:40] = 1
    before = {k: v.clone() for k, v in G.state_dict().items()}
    with torch.no_grad():
        y_csa = G(x, m).refined
        swap_attention(G, "contextual", contextual_ksize=1)
        assert isinstance(_layer(G), ContextualAttention) and _layer(G).ksize == 1
        y_ctx = G(x, m).refined
        swap_attention(G, "csa")
        y_back = G(x, m).refined
    assert G.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())
    assert not torch.allclose(y_csa, y_ctx)  # the layer matters in the hole
    torch.testing.assert_close(y_back, y_csa)
    with pytest.raises(ValueError, match="swap_attention: only the parameter-free layers"):
        swap_attention(G, "shift")


def test_warmup_runs_contextual_then_csa_with_the_freeze_and_fresh_adam(tmp_path):
    t = Trainer(_preset(tmp_path), progress=False)
    assert isinstance(_layer(t.G), ContextualAttention) and _layer(t.G).ksize == 1
    assert all(p.requires_grad for p in t.G.parameters())  # nothing frozen during the warm-up
    seen = []

    def record(tr, logs):
        frozen = {k: v.detach().clone() for k, v in tr.G.named_parameters() if k.startswith(ATTENTION_INPUT_PREFIXES)}
        seen.append((tr.step, type(_layer(tr.G)).__name__, frozen, len(tr.opt["G"].state)))

    t.fit(record)
    assert [(s, kind) for s, kind, _, _ in seen] == [(1, "ContextualAttention"), (2, "CoherentSemanticAttention"),
                                                     (3, "CoherentSemanticAttention"),
                                                     (4, "CoherentSemanticAttention")]
    assert seen[0][3] > 0 and seen[1][3] == 0  # the switch after step 2 cleared the generator's Adam moments
    frozen_at_switch, frozen_at_end = seen[1][2], seen[3][2]
    assert frozen_at_switch and all(torch.equal(frozen_at_switch[k], frozen_at_end[k]) for k in frozen_at_switch)
    assert not any(p.requires_grad for p in frozen_parameters(t.G, ("attention_input",)))
    head = [p for k, p in t.G.named_parameters() if k.startswith("refine_net.head")]
    assert head and all(p.requires_grad for p in head)


def test_resume_after_the_switch_continues_in_the_main_phase(tmp_path):
    t = Trainer(_preset(tmp_path, **{"train.steps": 3}), progress=False)
    t.fit()
    r = Trainer.resume(tmp_path / "run", {"train.steps": 4}, progress=False)
    assert r.step == 3 and isinstance(_layer(r.G), CoherentSemanticAttention)
    assert not any(p.requires_grad for p in frozen_parameters(r.G, ("attention_input",)))
    r.fit()
    assert r.step == 4
    # before the switch a resumed run is back in the warm-up
    t2 = Trainer(_preset(tmp_path, **{"train.steps": 4, "train.out_dir": str(tmp_path / "early")}), progress=False)
    t2.step = 1
    t2.save_checkpoint()
    r2 = Trainer.resume(tmp_path / "early", progress=False)
    assert isinstance(_layer(r2.G), ContextualAttention) and all(p.requires_grad for p in r2.G.parameters())
    r.close(), r2.close()


def test_freeze_alias_and_warmup_settings_are_checked(tmp_path):
    G = CSAInpainter(ModelConfig(image_size=64, base_channels=8))
    assert frozen_parameters(G, ("attention_input",)) == frozen_parameters(G, ATTENTION_INPUT_PREFIXES)
    with pytest.raises(ValueError, match=r"train.attention_warmup_steps=4 must be below train.steps=4"):
        Trainer(_preset(tmp_path, **{"train.attention_warmup_steps": 4}), progress=False)
    with pytest.raises(ValueError, match="train.attention_warmup_steps must be a step count >= 0"):
        get_preset("copytask", **{"train.attention_warmup_steps": -1})
    with pytest.raises(ValueError, match="needs a parameter-free model.attention"):
        Trainer(_preset(tmp_path, **{"model.attention": "shift"}), progress=False)
