"""Analytic FLOPs against torch's FlopCounterMode, JEST step accounting, and the FlopLedger."""

import pickle

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from jestkit import cli
from jestkit.errors import JestkitError
from jestkit.flops import FlopLedger, forward_flops, num_image_tokens, step_flops, train_flops
from jestkit.models import create_model, get_model_config, list_models


def counted(fn) -> int:
    mode = FlopCounterMode(display=False)
    with mode:
        fn()
    return mode.get_total_flops()


def per_example(fn_of_batch) -> int:
    """FLOPs of one more example (batch 3 minus batch 2): per-batch constants such as the PI-resize
    of the patch kernel cancel out."""
    return counted(lambda: fn_of_batch(3)) - counted(lambda: fn_of_batch(2))


@pytest.fixture(scope="module")
def meta_models():
    # The meta device: FlopCounterMode sees every matmul (on CPU, fused attention is not counted)
    # and ViT-B/16 costs nothing to run.
    with torch.device("meta"):
        return {name: create_model(name) for name in list_models()}


@pytest.mark.parametrize("name", list_models())
def test_analytic_flops_match_flop_counter(meta_models, name):
    model = meta_models[name]
    s, c = model.image_size, model.in_channels
    for p in model.patch_sizes[:2] or (None,):

        def image(b, p=p):
            x = torch.zeros(b, c, s, s, dtype=torch.uint8, device="meta")
            return model.encode_image(x, patch_size=p)

        want = forward_flops(model, patch_size=p)["image"]
        assert abs(per_example(image) - want) <= 0.1 * want, (name, p)
    for length in (model.context_length, model.context_length // 2):

        def text(b, length=length):
            return model.encode_text(torch.zeros(b, length, dtype=torch.long, device="meta"))

        want = forward_flops(model, text_length=length)["text"]
        assert abs(per_example(text) - want) <= 0.1 * want, (name, length)


def test_flops_on_cpu_tensors_without_attention():
    # Real tensors on the CPU (the MLP towers have no attention, which FlopCounterMode would miss).
    model = create_model("mlp-tiny-56")
    x = torch.zeros(4, 1, 56, 56, dtype=torch.uint8)
    tokens = torch.ones(4, 32, dtype=torch.long)
    f = forward_flops(model)
    assert counted(lambda: model.encode_image(x)) == 4 * f["image"]
    assert counted(lambda: model.encode_text(tokens)) == 4 * f["text"]


class PooledPixels(torch.nn.Module):
    """A new image tower kind, written the way a user would add one: it builds itself and
    knows its FLOPs; registering it is one table entry."""

    def __init__(self, in_features: int, embed_dim: int):
        super().__init__()
        self.head = torch.nn.Linear(in_features, embed_dim)

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.in_channels * (cfg.image_size // 2) ** 2, cfg.embed_dim)

    @staticmethod
    def flops(cfg, patch_size=None):
        return 2 * cfg.in_channels * (cfg.image_size // 2) ** 2 * cfg.embed_dim

    def reset_parameters(self, generator=None):
        torch.nn.init.normal_(self.head.weight, std=0.02, generator=generator)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head(torch.nn.functional.avg_pool2d(x, 2).flatten(1))


def test_a_new_tower_kind_is_one_table_entry(monkeypatch):
    from jestkit.models import towers
    from jestkit.models.dual_encoder import DualEncoder

    cfg = get_model_config("mlp-tiny-28").replace(name="pooled")
    with pytest.raises(JestkitError, match="image_kind='pooled'"):
        cfg.replace(image_kind="pooled")
    monkeypatch.setitem(towers.IMAGE_TOWERS, "pooled", PooledPixels)
    cfg = cfg.replace(image_kind="pooled")  # the config now accepts the kind
    model = DualEncoder(cfg)
    assert isinstance(model.visual, PooledPixels)
    images = torch.rand(3, 1, 28, 28)
    assert per_example(lambda n: model.visual(images[:n])) == forward_flops(cfg)["image"]
    assert forward_flops(cfg)["image"] == PooledPixels.flops(cfg)


def test_token_count_and_flops_scale_with_patch_size():
    cfg = get_model_config("vit-b16")
    tokens = [num_image_tokens(cfg, p) for p in cfg.patch_sizes]
    assert tokens == [(224 // p) ** 2 for p in cfg.patch_sizes]
    image = [forward_flops(cfg, p)["image"] for p in cfg.patch_sizes]
    assert image == sorted(image, reverse=True)
    # Paper: scoring at patch 32 instead of 16 (4x fewer tokens) costs about 72% fewer image FLOPs.
    ratio = forward_flops(cfg, 32)["image"] / forward_flops(cfg, 16)["image"]
    assert 0.2 < ratio < 0.3
    assert num_image_tokens(get_model_config("vit-tiny-56"), 14) * 4 == num_image_tokens(
        get_model_config("vit-tiny-56"), 7
    )
    assert num_image_tokens(get_model_config("vit-tiny-28", pooling="cls"), 7) == 17


def test_accepts_model_config_or_name_and_train_is_3x():
    model = create_model("vit-tiny-28")
    by_model = forward_flops(model, 7, 10)
    assert by_model == forward_flops(model.config, 7, 10) == forward_flops("vit-tiny-28", 7, 10)
    assert train_flops(model, 7, 10) == {k: 3 * v for k, v in by_model.items()}
    assert forward_flops(model)["text"] > forward_flops(model, text_length=8)["text"]
    assert all(isinstance(v, int) for v in by_model.values())


def test_bad_arguments():
    with pytest.raises(JestkitError, match=r"patch_size=5 is not one of model 'vit-tiny-28'"):
        forward_flops("vit-tiny-28", patch_size=5)
    with pytest.raises(JestkitError, match="patch_size=4: model 'mlp-tiny-28' has no patch sizes"):
        forward_flops("mlp-tiny-28", patch_size=4)
    with pytest.raises(
        JestkitError, match=r"text_length=33 must be an int in \[1, context_length=32\]"
    ):
        forward_flops("vit-tiny-28", text_length=33)
    with pytest.raises(JestkitError, match="unknown model 'nope'"):
        forward_flops("nope")
    with pytest.raises(
        JestkitError, match="expected a DualEncoder, ModelConfig or model name, got int"
    ):
        forward_flops(3)


def test_step_flops_match_the_paper_accounting():
    cfg = get_model_config("vit-b16")
    F = sum(forward_flops(cfg).values())
    b, n = 64, 320  # f = 0.8
    uniform = step_flops(cfg, b)
    assert uniform == {"learner_train": 3 * F * b, "learner_score": 0, "reference": 0}
    online = step_flops(cfg, b, n, reference=cfg)
    assert sum(online.values()) == 3 * F * b + 2 * F * n == 13 * F * b
    cached = step_flops(cfg, b, n)
    assert sum(cached.values()) == 3 * F * b + F * n
    # Flexi-JEST: score at patch 32, train half at 32 and half at 16.
    flexi = step_flops(cfg, b, n, score_patch_size=32, train_patch_sizes=(16, 32))
    F32 = sum(forward_flops(cfg, 32).values())
    assert flexi["learner_score"] == F32 * n
    assert flexi["learner_train"] == 3 * (b // 2) * (F + F32)
    with pytest.raises(JestkitError, match="batch_size=-1"):
        step_flops(cfg, -1)


def test_ledger_per_step_and_totals():
    ledger = FlopLedger()
    ledger.add(1, learner_score=10)
    ledger.add(1, learner_train=30)
    assert ledger.current == {"learner_train": 30, "learner_score": 10, "reference": 0}
    ledger.add(2, learner_train=30, reference=5)
    assert ledger.current == {"learner_train": 30, "learner_score": 0, "reference": 5}
    assert ledger.totals() == {
        "learner_train": 60,
        "learner_score": 10,
        "reference": 5,
        "total": 75,
    }
    d = ledger.to_dict()
    assert d["flops_step"] == 35 and d["flops_total"] == 75 and d["flops_total_learner_score"] == 10
    big = 3 * 10**20  # beyond int64: Python ints do not overflow
    ledger.add(3, learner_train=big)
    assert ledger.totals()["total"] == big + 75


def test_ledger_resume_equals_uninterrupted():
    def steps(ledger, start, stop):
        for s in range(start, stop):
            ledger.add(s, learner_train=3 * s + 1, learner_score=s * s, reference=7 if s % 3 else 0)

    whole = FlopLedger()
    steps(whole, 0, 10)
    first = FlopLedger()
    steps(first, 0, 4)
    state = pickle.loads(pickle.dumps(first.state_dict()))  # as torch.save / json would carry it
    resumed = FlopLedger()
    resumed.load_state_dict(state)
    steps(resumed, 4, 10)
    assert resumed.state_dict() == whole.state_dict() and resumed.to_dict() == whole.to_dict()


def test_ledger_bad_input():
    ledger = FlopLedger()
    ledger.add(5, learner_train=1)
    with pytest.raises(JestkitError, match="step=4 is before the ledger's last step 5"):
        ledger.add(4, learner_train=1)
    with pytest.raises(JestkitError, match="reference=-3"):
        ledger.add(5, reference=-3)
    with pytest.raises(JestkitError, match=r"learner_score=1\.5"):
        ledger.add(5, learner_score=1.5)
    with pytest.raises(JestkitError, match="step=-1"):
        ledger.add(-1)
    with pytest.raises(JestkitError, match="FlopLedger state: malformed"):
        ledger.load_state_dict({"step": 1})
    assert ledger.totals()["total"] == 1


def test_cli_flops(capsys):
    assert cli.main(["flops", "--model", "vit-tiny-56"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("vit-tiny-56")]
    assert [r[1] for r in rows] == ["7", "14"] and [r[2] for r in rows] == ["64", "16"]
    assert float(rows[0][3]) == pytest.approx(forward_flops("vit-tiny-56")["image"] / 1e6, abs=0.01)
    assert cli.main(["flops"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in list_models())
    assert (
        cli.main(
            ["flops", "--model", "vit-b16", "--patch-size", "32", "--text-length", "16", "--json"]
        )
        == 0
    )
    assert '"image_tokens": 49' in capsys.readouterr().out
    assert cli.main(["flops", "--model", "vit-b16", "--patch-size", "15"]) == 2
    assert "patch_size=15" in capsys.readouterr().err
