"""Retrieval / zero-shot metrics against brute force; the Evaluator on test doubles and real data."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import jestkit.evaluate as ev
from jestkit.errors import JestkitError

# ----------------------------------------------------------------------------- brute force


def naive_ranks(q: torch.Tensor, k: torch.Tensor, match: list[set[int]]) -> list[int]:
    """For each query, the wrong keys scoring >= its best true match (a plain double loop)."""
    out = []
    for i in range(q.shape[0]):
        sims = [float(torch.dot(q[i].double(), k[j].double())) for j in range(k.shape[0])]
        best = max(sims[j] for j in match[i])
        out.append(sum(1 for j in range(k.shape[0]) if j not in match[i] and sims[j] >= best))
    return out


def naive_metrics(img, txt, ks, cap_groups=None, img_groups=None) -> dict[str, float]:
    n = img.shape[0]
    cg = list(range(n)) if cap_groups is None else cap_groups.tolist()
    ig = list(range(n)) if img_groups is None else img_groups.tolist()
    match = [{j for j in range(n) if j == i or cg[j] == cg[i] or ig[j] == ig[i]} for i in range(n)]
    i2t, t2i = naive_ranks(img, txt, match), naive_ranks(txt, img, match)
    out = {}
    for name, r in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            out[f"{name}_r{k}"] = sum(x < k for x in r) / n
    out["retrieval_r1"] = (sum(x < 1 for x in i2t) + sum(x < 1 for x in t2i)) / (2 * n)
    return out


def argsort_ranks(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Position of the true key in each query's sorted list (valid when there are no ties)."""
    order = torch.argsort(q.double() @ k.double().T, dim=1, descending=True)
    return (order == torch.arange(q.shape[0])[:, None]).int().argmax(dim=1)


def randn_unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1)


# ----------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize("block_size", [None, 1, 7, 64])
def test_ranks_equal_argsort_without_ties(block_size):
    img, txt = randn_unit(50, 8, 0), randn_unit(50, 8, 1)
    txt = F.normalize(txt + 1.5 * img, dim=-1)  # some signal, so ranks spread over 0..49
    ranks = ev.retrieval_ranks(img, txt, block_size=block_size)
    assert torch.equal(ranks, argsort_ranks(img, txt).long())
    assert torch.equal(
        ev.retrieval_ranks(txt, img, block_size=block_size), argsort_ranks(txt, img).long()
    )


@pytest.mark.parametrize("path", ["table", "mask"])
@pytest.mark.parametrize("seed", range(4))
def test_metrics_equal_brute_force_with_ties_and_duplicates(seed, path, monkeypatch):
    if path == "mask":  # the per-block match mask, used when duplicates are too many for a table
        monkeypatch.setattr(ev, "BLOCK_ELEMENTS", 23)
    g = torch.Generator().manual_seed(seed)
    n = 23
    # Small integer vectors: many exactly equal similarities (ties), sums exact in float32.
    img = torch.randint(-1, 2, (n, 3), generator=g).float()
    txt = torch.randint(-1, 2, (n, 3), generator=g).float()
    cap_groups = torch.randint(0, 15 if seed else 2, (n,), generator=g)  # seed 0: two huge groups
    img_groups = torch.randint(0, 18, (n,), generator=g)
    for cg, ig in itertools.product([None, cap_groups], [None, img_groups]):
        for block in (None, 1, 5):
            got = ev.retrieval_metrics(
                img, txt, ks=(1, 2, 5), caption_groups=cg, image_groups=ig, block_size=block
            )
            assert got == pytest.approx(naive_metrics(img, txt, (1, 2, 5), cg, ig), abs=1e-12)


def test_perfect_permuted_and_collapsed_sets():
    n = 12
    img = torch.eye(n)
    assert ev.retrieval_metrics(img, img.clone()) == {
        "i2t_r1": 1.0, "i2t_r5": 1.0, "t2i_r1": 1.0, "t2i_r5": 1.0, "retrieval_r1": 1.0,
    }  # fmt: skip
    perm = torch.roll(torch.arange(n), 1)  # every caption belongs to another image
    assert ev.retrieval_metrics(img, img[perm]) == {
        "i2t_r1": 0.0, "i2t_r5": 0.0, "t2i_r1": 0.0, "t2i_r5": 0.0, "retrieval_r1": 0.0,
    }  # fmt: skip
    # A collapsed model (every embedding equal) ties everywhere: pessimistic ties give 0, not 1.
    same = torch.ones(n, 4) / 2
    got = ev.retrieval_metrics(same, same, ks=(1, 5, n - 1, n))
    assert got["retrieval_r1"] == 0.0 and got["i2t_r5"] == 0.0 and got[f"i2t_r{n - 1}"] == 0.0
    assert got[f"i2t_r{n}"] == 1.0 and got[f"t2i_r{n}"] == 1.0
    # Caption 1 is a copy of caption 0. Image 0 ties between them: wrong unless they are marked as
    # duplicates. Image 1 has lost its caption either way.
    txt = img.clone()
    txt[1] = txt[0]
    groups = torch.tensor([0, 0, *range(2, n)])
    assert ev.retrieval_metrics(img, txt)["i2t_r1"] == (n - 2) / n
    assert ev.retrieval_metrics(img, txt, caption_groups=groups)["i2t_r1"] == (n - 1) / n


def test_blocks_bound_memory(monkeypatch):
    """The similarity matrix is never materialised whole: each matmul sees <= BLOCK_ELEMENTS."""
    seen = []
    real = torch.matmul

    def matmul(a, b, out=None):
        seen.append(a.shape[0] * b.shape[1])
        return real(a, b, out=out)

    img, txt = randn_unit(100, 4, 0), randn_unit(100, 4, 1)
    with monkeypatch.context() as mp:
        mp.setattr(ev, "BLOCK_ELEMENTS", 300)
        mp.setattr(torch, "matmul", matmul)
        got = ev.retrieval_metrics(img, txt)
    assert max(seen) <= 300 and sum(seen) == 2 * 100 * 100
    assert got == pytest.approx(naive_metrics(img, txt, (1, 5)), abs=1e-12)


def test_ks_without_1_still_reports_headline():
    img = randn_unit(10, 4, 0)
    got = ev.retrieval_metrics(img, img, ks=(5,))
    assert set(got) == {"i2t_r5", "t2i_r5", "retrieval_r1"}


def test_zeroshot_against_argmax_and_ties():
    g = torch.Generator().manual_seed(0)
    img, cls = randn_unit(40, 6, 2), randn_unit(5, 6, 3)
    labels = torch.randint(0, 5, (40,), generator=g)
    expected = (torch.argmax(img @ cls.T, dim=1) == labels).double().mean().item()
    assert ev.zeroshot_metrics(img, cls, labels) == {
        "zeroshot_top1": pytest.approx(expected, abs=1e-12)
    }
    top2 = ev.zeroshot_metrics(img, cls, labels.numpy(), ks=(1, 2))["zeroshot_top2"]
    order = torch.argsort(img @ cls.T, dim=1, descending=True)[:, :2]
    assert top2 == pytest.approx(
        (order == labels[:, None]).any(1).double().mean().item(), abs=1e-12
    )
    # Two identical class embeddings: argmax would pick the first; pessimistic ties count it wrong.
    cls_tied = torch.stack([cls[0], cls[0], cls[1]])
    imgs = torch.stack([cls[0], cls[1]])
    assert ev.zeroshot_metrics(imgs, cls_tied, torch.tensor([0, 2])) == {"zeroshot_top1": 0.5}


def test_bad_inputs():
    x = randn_unit(4, 3, 0)
    with pytest.raises(JestkitError, match="same shape"):
        ev.retrieval_metrics(x, x[:3])
    with pytest.raises(JestkitError, match="empty"):
        ev.retrieval_metrics(x[:0], x[:0])
    nan = x.clone()
    nan[1, 1] = float("nan")
    with pytest.raises(JestkitError, match="text_emb contains non-finite"):
        ev.retrieval_metrics(x, nan)
    with pytest.raises(JestkitError, match="ks"):
        ev.retrieval_metrics(x, x, ks=(0,))
    with pytest.raises(JestkitError, match="caption_groups"):
        ev.retrieval_metrics(x, x, caption_groups=torch.zeros(3, dtype=torch.long))
    with pytest.raises(JestkitError, match=r"labels must be in \[0, 2\).*\[2\]"):
        ev.zeroshot_metrics(x, x[:2], torch.tensor([0, 1, 2, 0]))
    with pytest.raises(JestkitError, match="dim"):
        ev.zeroshot_metrics(x, torch.ones(2, 5), torch.tensor([0, 1, 1, 0]))


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("a photo of a {}.", "a photo of a shirt."),
        ("{c}, a {classname}", "shirt, a shirt"),
        ("{} {}", "shirt shirt"),
    ],
)
def test_fill_template(template, expected):
    assert ev.fill_template(template, "shirt") == expected


def test_fill_template_without_placeholder():
    with pytest.raises(JestkitError, match="no '\\{\\}' placeholder"):
        ev.fill_template("a photo", "shirt")


def naive_twin_metrics(img, txt, groups):
    """The definition, one example at a time."""
    sims = img.double() @ txt.double().T
    i2t, t2i = [], []
    for i, g in enumerate(groups):
        mates = [j for j, h in enumerate(groups) if h == g and j != i] if g >= 0 else []
        if not mates:
            continue
        i2t.append(all(sims[i, i] > sims[i, j] for j in mates))
        t2i.append(all(sims[i, i] > sims[j, i] for j in mates))
    if not i2t:
        return {}
    a, b = sum(i2t) / len(i2t), sum(t2i) / len(t2i)
    return {"twin_i2t": a, "twin_t2i": b, "twin_acc": (a + b) / 2}


def test_twin_metrics_hand_built_case():
    # Group 0: examples 0, 1, 2; group 1: examples 3, 4; example 5 in no group; example 6 alone in
    # group 2 (no mate: not counted).
    img = torch.eye(7)
    txt = torch.eye(7)
    txt[1] = img[0]  # caption 1 describes image 0 as well as it does image 0's own caption
    txt[4] = 0.5 * img[4] + 0.9 * img[3]  # caption 4 prefers image 3 (its twin) to image 4
    groups = torch.tensor([0, 0, 0, 1, 1, -1, 2])
    got = ev.twin_metrics(img, txt, groups)
    # image->text: image 0 ties caption 0 with caption 1 (a tie is wrong); image 1 sees caption 1
    # = image 0's direction: 0 < its own? img1.txt1 = 0, img1.txt0 = 0: a tie, wrong; image 2
    # right; image 3: txt3 = 1 vs txt4 = 0.9: right; image 4: own 0.5 vs txt3 0: right.
    assert got["twin_i2t"] == pytest.approx(3 / 5)
    # text->image: caption 0 right (1 vs 0); caption 1: image 0 scores 1 > image 1's 0: wrong;
    # caption 2 right; caption 3: 1 vs image 4's 0: right; caption 4: own 0.5 < image 3's 0.9: wrong.
    assert got["twin_t2i"] == pytest.approx(3 / 5)
    assert got == pytest.approx(naive_twin_metrics(img, txt, groups.tolist()))
    assert ev.twin_metrics(img, txt, torch.full((7,), -1)) == {}
    with pytest.raises(JestkitError, match="twin_groups"):
        ev.twin_metrics(img, txt, torch.zeros(7))  # floats


@pytest.mark.parametrize("seed", range(4))
def test_twin_metrics_equal_the_naive_loop(seed):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(40, 6, generator=g), dim=-1)
    txt = F.normalize(img + 0.8 * torch.randn(40, 6, generator=g), dim=-1)
    groups = torch.randint(-1, 12, (40,), generator=g)
    assert ev.twin_metrics(img, txt, groups) == pytest.approx(
        naive_twin_metrics(img, txt, groups.tolist()), abs=1e-12
    )


# ----------------------------------------------------------------------------- test doubles


class DigitTokenizer:
    """Each word with digits -> int(digits) + 1, other words -> 1; padded with 0 to length 6."""

    def __call__(self, captions):
        rows = []
        for c in captions:
            ids = [int(re.sub(r"\D", "", w)) + 1 if re.search(r"\d", w) else 1 for w in c.split()][
                :6
            ]
            rows.append(ids + [0] * (6 - len(ids)))
        return torch.tensor(rows, dtype=torch.long)


class IndexModel(torch.nn.Module):
    """Image -> one-hot of its first pixel; text -> one-hot of its largest token id - 1.

    Captions "item i" and images whose first pixel is i match perfectly. Records how it was called.
    """

    def __init__(self, dim: int = 32):
        super().__init__()
        self.dim = dim
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.calls = []

    def encode_image(self, images, patch_size=None):
        self.calls.append(
            ("image", patch_size, self.training, torch.is_grad_enabled(), images.shape[0])
        )
        idx = images[:, 0, 0, 0].long()
        return F.one_hot(idx, self.dim).float() + 0 * self.dummy

    def encode_text(self, tokens):
        self.calls.append(("text", None, self.training, torch.is_grad_enabled(), tokens.shape[0]))
        return F.one_hot(tokens.amax(dim=1) - 1, self.dim).float() + 0 * self.dummy


class LinearModel(torch.nn.Module):
    """A random linear dual encoder: no structure, but exercises batching and averaging."""

    def __init__(self, pixels: int, vocab: int = 40, dim: int = 8):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.img = torch.nn.Parameter(torch.randn(pixels, dim, generator=g))
        self.tok = torch.nn.Parameter(torch.randn(vocab, dim, generator=g))

    def encode_image(self, images, patch_size=None):
        return F.normalize(images.flatten(1).float() @ self.img, dim=-1)

    def encode_text(self, tokens):
        return F.normalize(self.tok[tokens].sum(1), dim=-1)


def toy_data(n: int, n_classes: int = 4):
    images = torch.zeros(n, 1, 3, 3, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    images[:, 0, 1, 1] = torch.arange(n, dtype=torch.uint8) % 7  # spread for the linear model
    captions = [f"item {i}" for i in range(n)]
    zs_images = torch.zeros(2 * n_classes + 1, 1, 3, 3, dtype=torch.uint8)
    labels = [*range(n_classes), *range(n_classes), -1]  # -1: unlabelled, dropped
    zs_images[:, 0, 0, 0] = torch.tensor([max(v, 0) for v in labels], dtype=torch.uint8)
    classes = [f"c{i}" for i in range(n_classes)]
    return dict(images=images, captions=captions, zeroshot_images=zs_images, zeroshot_labels=np.array(labels),
                classes=classes, templates=["a {}", "the {} here"])  # fmt: skip


def test_evaluator_perfect_double_and_protocol():
    data = toy_data(10)
    e = ev.Evaluator.from_data(DigitTokenizer(), "cpu", batch_size=4, **data)
    assert (e.n_eval, e.n_zeroshot) == (10, 8)
    model = IndexModel().train()
    got = e(model)
    assert got == {"i2t_r1": 1.0, "i2t_r5": 1.0, "t2i_r1": 1.0, "t2i_r5": 1.0, "retrieval_r1": 1.0,
                   "zeroshot_top1": 1.0}  # fmt: skip
    assert model.training  # restored
    assert all(
        not training and not grad for _, _, training, grad, _ in model.calls
    )  # eval, no_grad
    assert all(ps is None for kind, ps, *_ in model.calls if kind == "image")  # full resolution
    assert max(b for *_, b in model.calls) <= 4  # batched
    model.eval()
    e(model)
    assert not model.training
    # Shuffled captions: every image's caption belongs to another image.
    data["captions"] = data["captions"][1:] + data["captions"][:1]
    got = ev.Evaluator.from_data(DigitTokenizer(), "cpu", **data)(IndexModel())
    assert got["retrieval_r1"] == 0.0 and got["zeroshot_top1"] == 1.0


def test_evaluator_duplicate_captions_count_as_matches():
    data = toy_data(6)
    data["captions"][5] = data["captions"][4]  # two scenes with the same caption
    got = ev.Evaluator.from_data(DigitTokenizer(), "cpu", **data)(IndexModel())
    assert got["i2t_r1"] == 5 / 6  # image 4 finds caption 4 or 5 (both right); image 5 finds none
    assert got["t2i_r1"] == 1.0  # caption 5 = caption 4 retrieves image 4, which it also describes


def test_evaluator_reports_twin_accuracy_when_the_split_has_groups():
    data = toy_data(6)
    data["twin_groups"] = [0, 0, 1, 1, -1, -1]
    data["captions"][1] = data["captions"][0]  # twins whose captions cannot be told apart
    got = ev.Evaluator.from_data(DigitTokenizer(), "cpu", **data)(IndexModel())
    # Pair (0, 1): image 0 ties captions 0 and 1, image 1 ties them at 0: both wrong. Caption 0
    # picks image 0 (right), caption 1 (= caption 0) also picks image 0 (wrong). Pair (2, 3) is
    # right both ways.
    assert (got["twin_i2t"], got["twin_t2i"], got["twin_acc"]) == (0.5, 0.75, 0.625)
    got = ev.Evaluator.from_data(DigitTokenizer(), "cpu", max_examples=3, **data)(IndexModel())
    assert got["twin_acc"] == 0.25  # only the pair (0, 1) is whole in the first 3 examples
    with pytest.raises(JestkitError, match="twin_groups must be integers, one per eval example"):
        ev.Evaluator.from_data(DigitTokenizer(), "cpu", **{**data, "twin_groups": [0, 1]})


def test_evaluator_matches_pure_functions_and_is_batch_invariant():
    data = toy_data(30)
    model = LinearModel(pixels=9)
    tok = DigitTokenizer()
    results = [
        ev.Evaluator.from_data(tok, "cpu", batch_size=bs, **data)(model) for bs in (1, 7, 512)
    ]
    assert results[0] == pytest.approx(results[1], abs=1e-12) == results[2]
    with torch.no_grad():
        img, txt = model.encode_image(data["images"]), model.encode_text(tok(data["captions"]))
        cls = ev.class_embeddings(model, tok, data["classes"], data["templates"])
        zs = model.encode_image(data["zeroshot_images"][:-1])
    expected = ev.retrieval_metrics(
        img, txt, caption_groups=torch.arange(30), image_groups=torch.arange(30)
    )
    expected |= ev.zeroshot_metrics(zs, cls, torch.tensor(data["zeroshot_labels"][:-1]))
    assert results[2] == pytest.approx(expected, abs=1e-12)


def test_class_embeddings_prompt_ensembling():
    model, tok = LinearModel(pixels=9), DigitTokenizer()
    classes, templates = ["c1", "c2", "c3"], ["a {}", "the {} 5", "{} 7 9"]
    got = ev.class_embeddings(model, tok, classes, templates, batch_size=2)
    for i, c in enumerate(classes):
        with torch.no_grad():
            per_template = [
                F.normalize(model.encode_text(tok([t.format(c)])), dim=-1)[0] for t in templates
            ]
        mean = torch.stack(per_template).mean(0)
        assert torch.allclose(got[i], mean / mean.norm(), atol=1e-6)
    assert torch.allclose(got.norm(dim=-1), torch.ones(3))


def test_evaluator_max_examples_and_missing_parts():
    data = toy_data(10)
    e = ev.Evaluator.from_data(DigitTokenizer(), "cpu", max_examples=3, **data)
    assert (e.n_eval, e.n_zeroshot) == (3, 3)
    only_retrieval = {k: data[k] for k in ("images", "captions")}
    got = ev.Evaluator.from_data(DigitTokenizer(), "cpu", **only_retrieval)(IndexModel())
    assert "zeroshot_top1" not in got and got["retrieval_r1"] == 1.0
    with pytest.raises(JestkitError, match="nothing to evaluate"):
        ev.Evaluator.from_data(DigitTokenizer(), "cpu")
    with pytest.raises(JestkitError, match="templates"):
        ev.Evaluator.from_data(DigitTokenizer(), "cpu", **{**data, "templates": []})
    with pytest.raises(JestkitError, match=r"out of range for 2 classes"):
        ev.Evaluator.from_data(DigitTokenizer(), "cpu", **{**data, "classes": ["a", "b"]})
    with pytest.raises(JestkitError, match="captions"):
        ev.Evaluator.from_data(DigitTokenizer(), "cpu", **{**only_retrieval, "captions": ["x"]})
    with pytest.raises(JestkitError, match="8 labels"):
        ev.Evaluator.from_data(
            DigitTokenizer(), "cpu", **{**data, "zeroshot_labels": np.zeros(8, int)}
        )
    with pytest.raises(JestkitError, match="batch_size"):
        ev.Evaluator.from_data(DigitTokenizer(), "cpu", batch_size=0, **data)


# ----------------------------------------------------------------------------- end to end


def test_cli_eval_end_to_end(tmp_path, capsys):
    """`jestkit eval` on a prepared (tiny) dataset and a real exported model and checkpoint."""
    data = pytest.importorskip("jestkit.data")
    models = pytest.importorskip("jestkit.models")
    from jestkit.checkpoint import save_checkpoint
    from jestkit.cli import main

    ds = tmp_path / "digits"
    manifest = data.prepare_dataset(
        "digits", ds, pool_size=40, eval_size=60, zeroshot_size=30, progress=False
    )
    ev_split = data.load_split(ds / "eval")
    zs_split = data.load_split(ds / "zeroshot")
    prompts = [t.format(c) for c in manifest["classes"] for t in manifest["templates"]]
    tok = models.Tokenizer.train(ev_split.captions + prompts, vocab_size=128, context_length=16)
    model = models.create_model("mlp-tiny-28", image_size=8, context_length=16)
    models.save_pretrained(tmp_path / "model", model, tok)

    out = tmp_path / "res" / "eval.json"
    argv = ["eval", "--model", str(tmp_path / "model"), "--data", str(ds), "--batch-size", "16"]
    assert main([*argv, "--out", str(out), "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert (result["n_eval"], result["n_zeroshot"]) == (60, 30)

    # The same numbers by hand: embeddings, duplicate groups, pure metric functions.
    with torch.no_grad():
        tokens = tok(ev_split.captions)
        img, txt = model.encode_image(ev_split.images), model.encode_text(tokens)
        cls = ev.class_embeddings(model, tok, manifest["classes"], manifest["templates"])
        zs_img = model.encode_image(zs_split.images)
    assert len(set(ev_split.captions)) < 60  # digits captions repeat: duplicates matter here
    expected = ev.retrieval_metrics(
        img,
        txt,
        caption_groups=ev.duplicate_groups(tokens),
        image_groups=ev.duplicate_groups(ev_split.images),
    )
    expected |= ev.zeroshot_metrics(zs_img, cls, torch.as_tensor(zs_split.meta["label"]))
    assert result["metrics"] == pytest.approx(expected, abs=1e-12)

    # A training output folder evaluates its latest checkpoint.
    save_checkpoint(tmp_path / "run", 5, model, tok, {"step": 5})
    assert main(["eval", "--model", str(tmp_path / "run"), "--data", str(ds)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["metrics"] == result["metrics"] and again["model"].endswith("step-00000005")

    # Bad input: a clear error (exit code 2), no traceback.
    assert main(["eval", "--model", str(tmp_path / "nothing"), "--data", str(ds)]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "none")]) == 2
    assert "--data" in capsys.readouterr().err


def test_inputs_that_require_grad():
    x = randn_unit(6, 3, 0).requires_grad_()
    assert ev.retrieval_metrics(x, x)["retrieval_r1"] == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu():
    data = toy_data(30)
    model, tok = LinearModel(pixels=9), DigitTokenizer()
    cpu = ev.Evaluator.from_data(tok, "cpu", **data)(model)
    gpu = ev.Evaluator.from_data(tok, "cuda", **data)(model.cuda())
    assert gpu == pytest.approx(cpu, abs=1e-12)
    img, txt = randn_unit(500, 8, 0), randn_unit(500, 8, 1)
    groups = torch.arange(500) // 3
    cpu_r = ev.retrieval_metrics(img, txt, caption_groups=groups)
    assert ev.retrieval_metrics(
        img.cuda(), txt.cuda(), caption_groups=groups.cuda()
    ) == pytest.approx(cpu_r)
