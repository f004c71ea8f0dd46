"""Issue #14: users' data and models where they already are.

img2dataset-layout shards read in place (pipeline end to end, score's uids are the json's), an
open_clip-shaped model through ``py:`` as learner and as pretrained reference, the default run
length (the uniform baseline trained past its plateau, no speed-up against a chance-level
baseline), the "will JEST help?" diagnostic, and progress lines in logs.
"""

from __future__ import annotations

import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from img2dataset_helpers import write_img2dataset
from jestkit.cli import main as cli
from jestkit.config import RunConfig, validate
from jestkit.errors import JestkitError

TOY = "py:img2dataset_helpers:toy_clip"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JESTKIT_CACHE", str(tmp_path / "cache"))
    warnings.simplefilter("ignore")  # skipped records warn at every read; counted in split.json


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("i2d")
    pool = write_img2dataset(
        root / "pool", 240, shards=3, truncated=1, no_caption=5, wrong_caption_frac=0.3
    )
    write_img2dataset(root / "curated", 120, shards=1, seed=3)
    write_img2dataset(root / "eval", 80, shards=1, seed=5)
    return root, pool


# ----------------------------------------------------------------------------------------------
# img2dataset shards


def test_img2dataset_shards_are_read_in_place_with_bad_members_counted(shards, tmp_path):
    from jestkit.data import build_index, load_split
    from jestkit.data.img2dataset import is_source, open_source

    root, pool = shards
    assert is_source(root / "pool") and is_source(f"{root}/pool/{{00000..00002}}.tar")
    view = open_source(f"{root}/pool/{{00000..00002}}.tar", 20, 3)
    index = build_index(view, progress=False)
    # one truncated JPEG and one member without a caption, skipped and counted by reason
    assert index.bad.counts == {"truncated image": 1, "missing caption": 1}
    info = json.loads((view / "split.json").read_text())
    assert info["transform"]["image_size"] == 20 and info["transform"]["resize"] == "crop"
    sb = load_split(view)
    assert tuple(sb.images.shape) == (238, 3, 20, 20)  # JPEG/PNG/WebP of three sizes, resized
    assert sorted(sb.meta["source_uid"]) == sorted(pool["uids"])  # DataComp's uid, from the json
    assert set(sb.meta["image_format"]) == {"jpg", "png", "webp"}
    assert len(set(sb.meta["original_width"])) == 3
    # the folder and the brace pattern are the same data; a grey 1-channel view works too
    grey = load_split(open_source(root / "pool", 12, 1))
    assert tuple(grey.images.shape[1:]) == (1, 12, 12) and grey.uids == sb.uids


def test_img2dataset_uid_from_hash_and_caption_from_json(tmp_path):
    from jestkit.data import load_split
    from jestkit.data.img2dataset import open_source

    write_img2dataset(tmp_path / "a", 6, shards=1, with_uid=False, no_caption=2)
    # a record whose caption is only in its json (some img2dataset configurations)
    import tarfile

    with tarfile.open(tmp_path / "a" / "00000.tar", "a") as tar:
        data = (tmp_path / "x.png").open("wb")
        from PIL import Image

        Image.new("RGB", (9, 7), (200, 10, 10)).save(data, format="PNG")
        data.close()
        tar.add(tmp_path / "x.png", arcname="extra.png")
        meta = json.dumps({"caption": "a red square"}).encode()
        info = tarfile.TarInfo("extra.json")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
    sb = load_split(open_source(tmp_path / "a", 8, 3))
    assert len(sb) == 6 and "a red square" in sb.captions
    assert all(len(u) == 16 for u in sb.uids) and set(sb.meta["source_uid"]) == {""}
    again = load_split(open_source(tmp_path / "a", 8, 3))
    assert again.uids == sb.uids  # stable: a hash of key and bytes


def test_missing_shard_in_a_pattern_is_named(shards):
    from jestkit.data.img2dataset import open_source

    root, _ = shards
    with pytest.raises(JestkitError, match=r"1 of 4 shard\(s\) missing.*00003\.tar"):
        open_source(f"{root}/pool/{{00000..00003}}.tar", 16)


def test_pipeline_runs_on_img2dataset_shards_and_score_keeps_their_uids(shards, tmp_path, capsys):
    from jestkit.curation import read_scores
    from jestkit.pipeline import pipeline

    root, pool = shards
    out = tmp_path / "run"
    result = pipeline(
        f"{root}/pool/{{00000..00002}}.tar", root / "curated", root / "eval", out,
        model="mlp-tiny-28", steps=12, reference_steps=12, progress=False, plots=False,
    )  # fmt: skip
    assert set(result["runs"]) == {"reference", "jest"}
    assert any("truncated image: 1" in w and "missing caption: 1" in w for w in result["warnings"])
    split = json.loads((out / "data" / "pool" / "train" / "split.json").read_text())
    assert split["layout"] == "img2dataset" and split["count"] == 238
    assert "Will JEST help on this data?" in (out / "report.md").read_text()
    # score: the exported reference over the same shards; its uids are the json's
    scores = tmp_path / "scores.parquet"
    assert cli(["score", "--model", str(out / "references" / "reference"), "--shards",
                str(root / "pool"), "--out", str(scores), "--quiet"]) == 0  # fmt: skip
    table = read_scores(scores)
    assert sorted(table.column("uid").to_pylist()) == sorted(pool["uids"])
    # filter writes DataComp's uid records (u8,u8), which join its uid lists as they are
    keep = tmp_path / "keep.npy"
    assert cli(["filter", str(scores), "--keep-fraction", "0.5", "--format", "datacomp",
                "--out", str(keep), "--quiet"]) == 0  # fmt: skip
    arr = np.load(keep)
    assert arr.dtype == np.dtype("u8,u8") and len(arr) == 119
    as_hex = {f"{a:016x}{b:016x}" for a, b in arr.tolist()}
    assert as_hex <= set(pool["uids"])


# ----------------------------------------------------------------------------------------------
# py: factories


def test_factory_model_as_learner_and_as_pretrained_reference(shards, tmp_path):
    from jestkit.data.reference_cache import ReferenceCache
    from jestkit.models import load_pretrained, model_fingerprint
    from jestkit.models.factory import FactoryModel
    from jestkit.train import train

    root, _ = shards
    base = RunConfig()
    base.data.dir, base.data.eval_dir, base.data.dataset = (
        str(root / "pool"),
        str(root / "eval"),
        "",
    )
    cfg = RunConfig.from_dict(base.to_dict())
    cfg.model.name = TOY
    cfg.selection.method = "uniform"
    cfg.train.steps, cfg.train.batch_size, cfg.train.eval_every = 6, 16, 3
    cfg.train.progress = False
    final = train(validate(cfg), tmp_path / "learner")
    assert final["step"] == 6 and "eval/retrieval_r1" in final
    model, _tok = load_pretrained(tmp_path / "learner" / "checkpoints" / "step-00000006")
    assert isinstance(model, FactoryModel) and model.config.name == TOY
    fresh, _ = load_pretrained(TOY)
    assert model_fingerprint(model) != model_fingerprint(fresh)  # trained weights were saved

    # as a pretrained reference: cache-ref over img2dataset shards, then train with it
    cache = tmp_path / "cache-ref"
    assert cli(["cache-ref", "--model", TOY, "--shards", str(root / "pool"), "--out", str(cache),
                "--quiet"]) == 0  # fmt: skip
    opened = ReferenceCache.open(cache, model_fingerprint=model_fingerprint(fresh))
    assert len(opened) == 238 and opened.meta["forward_flops"]["image"] > 0  # measured FLOPs
    cfg = RunConfig.from_dict(base.to_dict())
    cfg.model.name = "mlp-tiny-28"
    cfg.selection.reference = TOY
    cfg.selection.filter_ratio = 0.5
    cfg.train.steps, cfg.train.batch_size, cfg.train.eval_every = 4, 16, 2
    cfg.train.progress = False
    final = train(validate(cfg), tmp_path / "jest")
    assert final["step"] == 4 and final["flops/reference"] > 0


def test_pipeline_with_your_model_as_learner_and_pretrained_reference(shards, tmp_path):
    from jestkit.pipeline import pipeline

    root, _ = shards
    out = tmp_path / "run"
    result = pipeline(
        root / "pool", root / "curated", root / "eval", out, model=TOY, reference=TOY,
        steps=6, progress=False, plots=False,
    )  # fmt: skip
    assert result["stages"]["reference"] == "pretrained" and set(result["runs"]) == {"jest"}
    assert not (out / "runs" / "reference").exists()  # not trained
    assert result["diagnostic"]["weak"]  # an untrained toy model cannot guide selection
    report = (out / "report.md").read_text()
    assert "is weak on this pool" in report and "torch.utils.flop_counter" in report
    with pytest.raises(JestkitError, match=r"--reference 'nowhere': not a model folder"):
        pipeline(root / "pool", root / "curated", root / "eval", tmp_path / "x",
                 reference="nowhere", progress=False)  # fmt: skip


def test_factory_errors_name_the_path_and_what_is_missing():
    from jestkit.models import load_pretrained

    with pytest.raises(JestkitError, match=r"py:no_such_module:f.*cannot import module"):
        load_pretrained("py:no_such_module:f")
    with pytest.raises(JestkitError, match=r"py:img2dataset_helpers:nope.*no attribute 'nope'"):
        load_pretrained("py:img2dataset_helpers:nope")
    with pytest.raises(JestkitError, match=r"'py:img2dataset_helpers:no_encode_text'.*encode_text"):
        load_pretrained("py:img2dataset_helpers:no_encode_text")
    with pytest.raises(JestkitError, match=r"expected 'py:package.module:function'"):
        load_pretrained("py:justamodule")


def test_factory_reads_a_torchvision_style_preprocess_and_measures_flops():
    import torch

    from jestkit.flops import forward_flops
    from jestkit.models import load_pretrained

    model, _tok = load_pretrained("py:img2dataset_helpers:toy_clip_compose")
    assert model.image_size == 16 and model.config.mean == (0.5, 0.5, 0.5)
    f = forward_flops(model)
    assert f["image"] == 2 * 3 * 16 * 16 * 32  # the one Linear layer, counted by torch
    grey = torch.randint(0, 255, (2, 1, 28, 28), dtype=torch.uint8)  # any size, grey -> RGB
    emb = model.encode_image(grey)
    assert emb.shape == (2, 32) and torch.allclose(emb.norm(dim=-1), torch.ones(2))


# ----------------------------------------------------------------------------------------------
# default run length and chance levels


def test_default_length_trains_the_baseline_past_its_plateau(tmp_path, capsys):
    from jestkit.pipeline import pipeline, write_example_data

    paths = write_example_data(tmp_path / "data")
    out = tmp_path / "run"
    result = pipeline(
        paths["pool"], paths["curated"], paths["eval"], out, model="mlp-tiny-28",
        selector="uniform", progress=False, plots=False,
    )  # fmt: skip
    length = result["run_length"]
    assert length["rule"] == "plateau" and length["stopped"] == "plateau"
    values = [v for _, v in length["series"]]
    chance = 1 / 360
    assert result["runs"]["uniform"]["eval/retrieval_r1"] > 10 * chance
    q = -(-len(values) // 4)
    assert max(values[-q:]) <= max(values[:-q]) + chance  # past the plateau, as the rule says
    report = (out / "report.md").read_text()
    assert "stopped improving" in report and "(baseline) (near chance)" not in report


def test_no_speedup_against_a_chance_level_baseline():
    from jestkit.report.build import flag_near_chance
    from jestkit.report.markdown import render_markdown

    methods = {
        "uniform": {"final_metric": 0.0065, "baseline": "uniform", "speedup": 1.0},
        "jest": {"final_metric": 0.05, "baseline": "uniform", "speedup": 10.0,
                 "flops_speedup": 3.0, "speedup_vs_baseline_saturation": 5.0},
    }  # fmt: skip
    notes = flag_near_chance(methods, 1 / 460)
    assert methods["uniform"]["near_chance"] and not methods["jest"]["near_chance"]
    assert methods["jest"]["speedup"] is None and methods["jest"]["flops_speedup"] is None
    assert any("no speed-up is given" in n for n in notes)
    untouched = {"uniform": {"final_metric": 0.2, "baseline": "uniform"},
                 "jest": {"final_metric": 0.3, "baseline": "uniform", "speedup": 2.0}}  # fmt: skip
    assert flag_near_chance(untouched, 1 / 460) == [] and untouched["jest"]["speedup"] == 2.0
    row = {"seeds": 1, "final_metric_std": 0.0, "steps_to_target": None,
           "steps_to_target_per_seed": None, "baseline_steps_to_own_final": None,
           "flops_to_target": None, "flops_to_target_with_ref_training": None,
           "speedup": None, "flops_speedup": None, "noisy_selected_frac": None}  # fmt: skip
    md = render_markdown(
        {
            "target_metric": "eval/retrieval_r1",
            "runs": [],
            "unfinished_runs": [],
            "claims": [],
            "methods": {n: {**row, **m} for n, m in methods.items()},
            "batch_sweep": [],
            "plots": [],
            "notes": notes,
            "suite_dir": "x",
            "sections": [],
        }
    )
    assert "uniform (baseline) (near chance)" in md and "10.00" not in md


# ----------------------------------------------------------------------------------------------
# the diagnostic


def _reference(tmp_path: Path, curated: Path, ev: Path, name: str):
    from jestkit.checkpoint import latest_checkpoint
    from jestkit.models import load_pretrained
    from jestkit.train import train

    cfg = RunConfig()
    cfg.data.dir, cfg.data.eval_dir, cfg.data.dataset = str(curated), str(ev), ""
    cfg.model.name = "mlp-tiny-28"
    cfg.selection.method = "uniform"
    cfg.train.steps, cfg.train.batch_size, cfg.train.eval_every = 150, 32, 150
    cfg.train.progress = False
    train(validate(cfg), tmp_path / name)
    return load_pretrained(latest_checkpoint(tmp_path / name))


def test_diagnostic_tells_a_reference_that_cannot_guide_from_one_that_can(tmp_path):
    from jestkit.data.img2dataset import open_source
    from jestkit.pipeline.diagnose import diagnose

    low, high = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
    write_img2dataset(tmp_path / "cur_low", 300, shards=1, seed=1, labels=low)
    write_img2dataset(tmp_path / "cur_all", 300, shards=1, seed=1)
    write_img2dataset(tmp_path / "pool", 300, shards=1, seed=2, labels=high,
                      wrong_caption_frac=0.25)  # fmt: skip
    write_img2dataset(tmp_path / "eval", 100, shards=1, seed=4, labels=high)
    verdicts = {}
    for name in ("cur_low", "cur_all"):
        model, tok = _reference(tmp_path, tmp_path / name, tmp_path / "eval", f"ref_{name}")
        splits = {n: open_source(tmp_path / n2, 28, 1) for n, n2 in
                  (("curated", name), ("eval", "eval"), ("pool", "pool"))}  # fmt: skip
        verdicts[name] = diagnose(model, tok, splits, name)
    weak, good = verdicts["cur_low"], verdicts["cur_all"]
    assert weak["weak"] and "unlikely to guide" in weak["verdict"]
    assert any("covers POOL's concepts" in h for h in weak["helps"])
    assert weak["splits"]["pool"]["pair_auc"] < 0.6 < good["splits"]["pool"]["pair_auc"]
    assert not good["weak"] and "can guide selection" in good["verdict"]


# ----------------------------------------------------------------------------------------------
# progress in logs


def test_progress_in_a_log_is_a_line_every_few_percent():
    from jestkit.progress import LineProgress, progress_bar

    buf = io.StringIO()  # not a terminal
    bar = progress_bar(total=1000, desc="train", unit="step", file=buf)
    assert isinstance(bar, LineProgress)
    for _ in range(1000):
        bar.update(1)
    bar.set_postfix(loss="0.5")
    bar.close()
    text = buf.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 15 <= len(lines) <= 21 and lines[-1].startswith("train: 100% 1000/1000 step")
    quiet = io.StringIO()
    bar = progress_bar(total=10, file=quiet, disable=True)
    bar.update(10)
    bar.close()
    assert quiet.getvalue() == ""


def test_cleanup_helpers_leave_no_view_in_place(shards, tmp_path):
    """A changed tar invalidates its view (rebuilt on the next open, never read stale)."""
    from jestkit.data import build_index
    from jestkit.data.img2dataset import open_source

    root, _ = shards
    copy = tmp_path / "pool"
    shutil.copytree(root / "pool", copy)
    view = open_source(copy, 16, 3)
    n = len(build_index(view, progress=False))
    (copy / "00002.tar").unlink()
    with pytest.raises(JestkitError, match="missing"):
        build_index(view, progress=False)
    assert len(build_index(open_source(copy, 16, 3), progress=False)) < n
