"""DualEncoder, registry, config validation, input validation, export/import and fingerprints."""

import json
import math
import os
import shutil

import pytest
import torch

from jestkit.errors import JestkitError
from jestkit.models import (
    DualEncoder,
    ModelConfig,
    Tokenizer,
    create_model,
    get_model_config,
    list_models,
    load_pretrained,
    model_fingerprint,
    register_model,
    registry,
    save_pretrained,
    trim_padding,
    write_model_files,
)
from jestkit.scoring import Embeddings

TINY = [n for n in list_models() if n != "vit-b16"]
CAPTIONS = [
    f"a {t} {i} in the {p}"
    for t in ("dark", "light")
    for i in ("bag", "coat", "sneaker")
    for p in ("top left", "bottom right")
]


def batch(model: DualEncoder, n: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s, c, L = model.image_size, model.in_channels, model.context_length
    images = torch.randint(0, 256, (n, c, s, s), dtype=torch.uint8, generator=g)
    tokens = torch.randint(3, model.vocab_size, (n, L), generator=g)
    lengths = torch.tensor([L - 1, 5, 1, 9, 3][:n]).clamp(max=L - 1)
    pos = torch.arange(L)
    tokens[pos == lengths[:, None]] = 2
    tokens[pos > lengths[:, None]] = 0
    return images, tokens


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(CAPTIONS, vocab_size=100, context_length=32)


def test_registry_has_cpu_and_paper_sizes():
    names = list_models()
    assert names == sorted(names)
    for name in (
        "mlp-tiny-28",
        "mlp-tiny-56",
        "mlp-tiny-32c",
        "vit-tiny-28",
        "vit-tiny-56",
        "vit-tiny-32c",
        "vit-b16",
    ):
        assert name in names
    grey56 = get_model_config("vit-tiny-56")
    assert (grey56.image_size, grey56.in_channels, grey56.patch_sizes[:2]) == (56, 1, (7, 14))
    b16 = get_model_config("vit-b16")
    assert (
        b16.image_size,
        b16.patch_sizes[:1],
        b16.image_width,
        b16.image_depth,
        b16.text_depth,
    ) == (224, (16,), 768, 12, 12)
    assert 32 in b16.patch_sizes


@pytest.mark.parametrize("name", TINY)
@torch.no_grad()
def test_every_tiny_model(name):
    model = create_model(name)
    cfg = model.config
    assert (model.image_size, model.in_channels, model.context_length, model.vocab_size) == (
        cfg.image_size,
        cfg.in_channels,
        cfg.context_length,
        cfg.vocab_size,
    )
    assert model.patch_sizes == (cfg.patch_sizes if cfg.image_kind == "vit" else ())
    assert (
        math.isclose(model.logit_scale.item(), math.log(10), rel_tol=1e-6)
        and model.logit_bias.item() == -10
    )
    images, tokens = batch(model)
    for p in model.patch_sizes or (None,):
        img = model.encode_image(images, patch_size=p)
        assert img.shape == (3, cfg.embed_dim) and img.dtype == torch.float32
        torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
        # uint8 input equals the same image already scaled to [-1, 1].
        torch.testing.assert_close(model.encode_image(images.float() / 127.5 - 1, p), img)
        # No leakage between the examples of a batch.
        torch.testing.assert_close(
            model.encode_image(images[1:2], p), img[1:2], rtol=1e-4, atol=1e-5
        )
    txt = model.encode_text(tokens)
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(model.encode_text(tokens[1:2]), txt[1:2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.encode_text(tokens, validate=False), txt)
    img, txt2, scale, _ = model(images, tokens)
    torch.testing.assert_close(txt2, txt)
    torch.testing.assert_close(scale, model.logit_scale.exp())
    emb = model.embeddings(images, tokens)
    assert isinstance(emb, Embeddings) and len(emb) == 3
    torch.testing.assert_close(emb.image, img)
    torch.testing.assert_close(emb.scale, torch.tensor(10.0))
    torch.testing.assert_close(emb.bias, torch.tensor(-10.0))


@pytest.mark.parametrize("text_kind", ["transformer", "mlp"])
@torch.no_grad()
def test_text_towers_ignore_padding_and_see_word_order(text_kind):
    model = create_model("vit-tiny-28", text_kind=text_kind, text_pooling="mean")
    _, tokens = batch(model, n=5)
    tokens = tokens[1:]  # captions of at most 9 tokens + [EOS]
    full = model.encode_text(tokens)
    # Trailing padding columns change nothing: the embedding does not depend on how much padding.
    torch.testing.assert_close(model.encode_text(tokens[:, :10]), full, rtol=1e-5, atol=1e-6)
    trimmed = trim_padding(tokens)
    assert trimmed.shape == (4, 10)
    torch.testing.assert_close(model.encode_text(trimmed), full, rtol=1e-5, atol=1e-6)
    assert trim_padding(torch.zeros(2, 5, dtype=torch.long)).shape == (2, 1)
    # Swapping two words changes the embedding.
    swapped = tokens.clone()
    swapped[:, [0, 1]] = tokens[:, [1, 0]]
    assert not torch.allclose(model.encode_text(swapped), full, atol=1e-4)


@torch.no_grad()
def test_eos_pooling_takes_the_last_real_token():
    model = create_model("vit-tiny-28", text_pooling="eos")
    _, tokens = batch(model, n=3)
    tower = model.text
    x = tower.token_embedding(tokens) + tower.pos_embed
    keep = tokens != 0
    for blk in tower.blocks:
        x = blk(x, keep[:, None, None, :])
    x = tower.norm(x)
    last = keep.sum(1) - 1
    want = torch.nn.functional.normalize(tower.head(x[torch.arange(3), last]), dim=-1)
    torch.testing.assert_close(model.encode_text(tokens), want, rtol=1e-4, atol=1e-5)


def test_training_step_changes_every_parameter():
    model = create_model("vit-tiny-28", pooling="map")
    images, tokens = batch(model, n=4)
    img, txt, scale, bias = model(images, tokens, 7)
    logits = scale * img @ txt.T + bias
    loss = -torch.nn.functional.logsigmoid((2 * torch.eye(4) - 1) * logits).sum()
    loss.backward()
    missing = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert missing == []


def test_init_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = create_model("vit-tiny-28"), create_model("vit-tiny-28")
    assert torch.equal(state, torch.random.get_rng_state())
    assert model_fingerprint(a) == model_fingerprint(b)
    c = create_model("vit-tiny-28", init_seed=1)
    assert not torch.equal(a.visual.pos_embed, c.visual.pos_embed)
    with torch.device("meta"):
        m = create_model("vit-b16")
    assert m.visual.pos_embed.is_meta and m.patch_sizes[0] == 16


def test_config_round_trip_and_overrides():
    cfg = get_model_config("vit-tiny-56", embed_dim=32, patch_sizes=[7, 28])
    assert cfg.patch_sizes == (7, 28) and cfg.embed_dim == 32
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.replace(mlp_ratio=2) == cfg.replace(mlp_ratio=2.0)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"widht": 3}, r"unknown model config key 'widht' \(value 3\); valid keys: .*image_width"),
        ({"image_width": "64"}, r"image_width='64' has type str, expected int"),
        ({"image_depth": True}, "image_depth=True"),
        ({"patch_sizes": 7}, "patch_sizes=7"),
        (
            {"patch_sizes": (7, 10)},
            r"patch size 10 in patch_sizes=\(7, 10\) does not divide image_size=56",
        ),
        ({"patch_sizes": (14, 7)}, "full-resolution"),
        ({"patch_sizes": ()}, "needs at least one patch size"),
        ({"image_kind": "mlp"}, r"patch_sizes=\(7, 14\) must be \(\) for image_kind='mlp'"),
        ({"image_kind": "resnet"}, "image_kind='resnet' is not one of"),
        ({"image_heads": 3}, "image_width=64 is not divisible by image_heads=3"),
        ({"text_heads": 0}, "text_heads=0 must be >= 1"),
        ({"pooling": "max"}, "pooling='max'"),
        ({"vocab_size": 2}, "vocab_size=2"),
        ({"context_length": 1}, "context_length=1"),
        ({"init_logit_bias": float("nan")}, "init_logit_bias=nan"),
    ],
)
def test_bad_config(overrides, match):
    with pytest.raises(JestkitError, match=match):
        create_model("vit-tiny-56", **overrides)


def test_unknown_model_lists_known_ones():
    with pytest.raises(
        JestkitError, match=r"unknown model 'vit-huge'; known models: .*vit-tiny-56"
    ):
        create_model("vit-huge")


def test_register_model(monkeypatch):
    monkeypatch.setattr(
        registry, "_PRESETS", dict(registry._PRESETS)
    )  # leave the registry as it was
    register_model("test-custom-mlp", get_model_config("mlp-tiny-28", embed_dim=16))
    assert "test-custom-mlp" in list_models()
    assert create_model("test-custom-mlp").embed_dim == 16
    with pytest.raises(JestkitError, match="already registered"):
        register_model("test-custom-mlp", {"image_kind": "mlp", "patch_sizes": ()})
    with pytest.raises(JestkitError, match="patch_sizes"):
        register_model("test-bad", {"image_kind": "vit", "patch_sizes": (5,)})


def test_bad_inputs_name_the_value():
    model = create_model("vit-tiny-56")
    images, tokens = batch(model)
    cases = [
        (
            lambda: model.encode_image(images[:, :, :28]),
            r"shape \(3, 1, 28, 56\) does not match \[B, 1, 56, 56\]",
        ),
        (lambda: model.encode_image(images.expand(3, 3, 56, 56)), r"shape \(3, 3, 56, 56\)"),
        (lambda: model.encode_image(images[0]), r"shape \(1, 56, 56\)"),
        (
            lambda: model.encode_image(images.long()),
            "dtype torch.int64 must be torch.uint8 or floating",
        ),
        (
            lambda: model.encode_image(images, patch_size=8),
            r"patch_size=8 is not one of .* \(7, 14\)",
        ),
        (lambda: model.encode_image(images.numpy()), "expected a Tensor"),
        (lambda: model.encode_text(tokens.float()), "dtype torch.float32 must be torch.int64"),
        (lambda: model.encode_text(tokens[0]), r"shape \(32,\)"),
        (
            lambda: model.encode_text(torch.zeros(2, 33, dtype=torch.long)),
            r"shape \(2, 33\) .* context_length=32",
        ),
        (
            lambda: model.encode_text(tokens.masked_fill(tokens == 2, 512)),
            r"id 512 is outside \[0, vocab_size=512\)",
        ),
        (lambda: model.encode_text(tokens.masked_fill(tokens == 2, -1)), r"id -1 is outside"),
    ]
    for fn, match in cases:
        with pytest.raises(JestkitError, match=match):
            fn()
    mlp = create_model("mlp-tiny-28")
    with pytest.raises(
        JestkitError, match=r"patch_size=7: model 'mlp-tiny-28' .* has no patch sizes"
    ):
        mlp.encode_image(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), patch_size=7)


@pytest.mark.parametrize("name", ["vit-tiny-28", "mlp-tiny-32c", "cnn-tiny-56"])
def test_save_load_round_trip(tmp_path, tokenizer, name):
    model = create_model(name, vocab_size=tokenizer.vocab_size, init_seed=3)
    with torch.no_grad():
        model.logit_bias.fill_(-7.5)  # a trained value, not the init
    out = save_pretrained(tmp_path / "export", model, tokenizer)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary directories left
    loaded, tok = load_pretrained(out)
    assert loaded.config == model.config and tok == tokenizer
    assert model_fingerprint(loaded) == model_fingerprint(model)
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["name"] == name and config["tokenizer"]["context_length"] == 32
    images, _ = batch(model)
    tokens = tokenizer(CAPTIONS[:3])
    with torch.no_grad():
        for p in model.patch_sizes or (None,):
            assert torch.equal(loaded.encode_image(images, p), model.encode_image(images, p))
        assert torch.equal(loaded.encode_text(tokens), model.encode_text(tokens))
        assert loaded.logit_bias.item() == -7.5
    assert all(p.requires_grad for p in loaded.parameters())
    # Saving again replaces the export atomically.
    save_pretrained(
        out, create_model(name, vocab_size=tokenizer.vocab_size, init_seed=4), tokenizer
    )
    assert model_fingerprint(load_pretrained(out)[0]) != model_fingerprint(model)
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_checkpoint_directory_and_mismatched_weights(tmp_path, tokenizer):
    model = create_model("vit-tiny-28", vocab_size=tokenizer.vocab_size)
    write_model_files(tmp_path / "ckpt", model, tokenizer)
    torch.save({"step": 1}, tmp_path / "ckpt" / "train_state.pt")
    assert model_fingerprint(load_pretrained(tmp_path / "ckpt")[0]) == model_fingerprint(model)

    # config.json of another config beside these weights
    other = create_model("vit-tiny-28", vocab_size=tokenizer.vocab_size, image_width=32)
    write_model_files(tmp_path / "other", other, tokenizer)
    shutil.copy(tmp_path / "other" / "config.json", tmp_path / "ckpt" / "config.json")
    with pytest.raises(
        JestkitError,
        match=r"tensor 'visual\.[\w.]+' has shape \(64[,)].*config 'vit-tiny-28' expects \(32",
    ):
        load_pretrained(tmp_path / "ckpt")
    cls = create_model("vit-tiny-28", vocab_size=tokenizer.vocab_size, pooling="cls")
    write_model_files(tmp_path / "cls", cls, tokenizer)
    shutil.copy(tmp_path / "cls" / "config.json", tmp_path / "ckpt" / "config.json")
    with pytest.raises(JestkitError, match=r"tensor 'visual.cls_token' is missing"):
        load_pretrained(tmp_path / "ckpt")
    shutil.copy(tmp_path / "ckpt" / "model.safetensors", tmp_path / "cls" / "model.safetensors")
    with pytest.raises(JestkitError, match=r"tensor 'visual.cls_token' is missing"):
        load_pretrained(tmp_path / "cls")
    write_model_files(tmp_path / "cls", cls, tokenizer)
    write_model_files(tmp_path / "gap", model, tokenizer)
    shutil.copy(tmp_path / "gap" / "config.json", tmp_path / "cls" / "config.json")
    with pytest.raises(JestkitError, match=r"unexpected tensor 'visual.cls_token'"):
        load_pretrained(tmp_path / "cls")

    with pytest.raises(JestkitError, match=r"config.json: not found"):
        load_pretrained(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"format": "something-else"}')
    with pytest.raises(JestkitError, match="format='something-else'"):
        load_pretrained(tmp_path / "bad")
    bad_cfg = json.loads((tmp_path / "other" / "config.json").read_text())
    bad_cfg["model"]["patch_size"] = 4
    (tmp_path / "bad" / "config.json").write_text(json.dumps(bad_cfg))
    with pytest.raises(JestkitError, match="unknown model config key 'patch_size'"):
        load_pretrained(tmp_path / "bad")


def test_export_checks_tokenizer_fits_model(tmp_path, tokenizer):
    with pytest.raises(
        JestkitError, match=r"tokenizer vocab_size=\d+ exceeds the model's vocab_size=50"
    ):
        save_pretrained(tmp_path / "x", create_model("mlp-tiny-28", vocab_size=50), tokenizer)
    with pytest.raises(
        JestkitError, match="tokenizer context_length=32 != model context_length=16"
    ):
        save_pretrained(tmp_path / "x", create_model("mlp-tiny-28", context_length=16), tokenizer)
    assert not (tmp_path / "x").exists()


def test_fingerprint_tracks_every_weight_and_the_config():
    model = create_model("mlp-tiny-28")
    fp = model_fingerprint(model)
    assert len(fp) == 64 and fp == model_fingerprint(model)
    with torch.no_grad():
        model.text.head.bias[3] += 1e-6
    assert model_fingerprint(model) != fp
    assert model_fingerprint(create_model("mlp-tiny-28", name="renamed")) != fp
    assert model_fingerprint(model.to(torch.bfloat16)) != model_fingerprint(model.float())


def test_bench_models_runs_and_reports_ratios():
    from jestkit.benchmarks.models import bench_model

    rows = bench_model("vit-tiny-28", batch_size=8, score_batch_size=8, steps=1, warmup=0, seed=0)
    assert [r["mode"] for r in rows] == ["train", "train multi-res", "score", "score"]
    assert all(r["examples_per_s"] > 0 for r in rows)
    assert rows[0]["flop_ratio"] == 1.0 and rows[2]["flop_ratio"] == 1.0
    assert rows[3]["flop_ratio"] > 1.0  # patch 7 scores with fewer FLOPs than patch 4
