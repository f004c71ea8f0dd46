"""`jestkit pipeline`: a user's files -> reference -> cache -> learners -> report.

Checked: an interrupted pipeline (a crash between stages, a SIGINT inside a run) continues where
it stopped and ends with exactly the lines an uninterrupted one writes; shard folders and the CSVs
they came from give the same runs; messy user data (mixed image modes, other scripts, another
image size, overlapping sets) works and is reported; bad input fails early with a clear error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jestkit.checkpoint import latest_checkpoint
from jestkit.cli import main as cli
from jestkit.data import load_digits, load_split
from jestkit.data.make_shards import make_shards
from jestkit.errors import JestkitError
from jestkit.metrics import MetricsWriter, read_metrics
from jestkit.models import load_pretrained
from jestkit.pipeline import (
    PipelineOptions,
    add_arguments,
    pipeline,
    plan_sizes,
    prepare_data,
    resolve_input,
    write_example_data,
    zeroshot_classes,
)

FAST = dict(model="mlp-tiny-28", steps=24, reference_steps=20, progress=False, plots=False)
TIMING = ("time", "step_time")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JESTKIT_CACHE", str(tmp_path / "cache"))  # the pipeline must not need it


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    d = tmp_path_factory.mktemp("example") / "digits"
    return write_example_data(d)


def _lines(run_dir):
    """metrics.jsonl without wall-clock fields (the only ones a resume may change)."""
    return [
        {k: v for k, v in r.items() if k not in TIMING}
        for r in read_metrics(run_dir / "metrics.jsonl")
    ]


# ----------------------------------------------------------------------------------------------
# sizes


@pytest.mark.parametrize("pool", [40, 300, 1137, 20_000, 2_000_000])
@pytest.mark.parametrize("curated", [8, 300, 50_000])
@pytest.mark.parametrize("f", [0.5, 0.8, 0.9])
def test_default_sizes_fit_the_data(pool, curated, f):
    opts = PipelineOptions(filter_ratio=f)
    try:
        s = plan_sizes(pool, curated, opts)
    except JestkitError as e:
        # Only a pool too small for even the smallest batch is refused, and it says so.
        assert pool < round(8 / (1 - f)) and "--pool" in str(e)
        return
    assert s.super_batch == round(s.batch_size / (1 - f)) <= pool
    assert 8 <= s.batch_size <= 256 and s.batch_size % 8 == 0
    assert s.batch_size % s.n_chunks == 0 and 1 <= s.n_chunks <= 16
    assert s.super_batch <= max(pool // 4, round(8 / (1 - f)))  # several super-batches an epoch
    # Default length (#14): the uniform baseline's plateau, capped; evaluated about once a pass.
    assert s.steps_rule == "plateau" and s.steps == opts.max_steps
    assert 10 <= s.eval_every <= 200 and s.checkpoint_every == s.eval_every
    assert 100 <= s.reference_steps <= 600
    assert s.reference_batch_size <= min(s.batch_size, curated)
    epochs = plan_sizes(pool, curated, PipelineOptions(filter_ratio=f, epochs=2))
    assert epochs.steps_rule == "epochs" and epochs.steps == -(-2 * pool // s.batch_size)
    if pool >= 4 * 256 / (1 - f):
        assert s.batch_size == 256  # large data keeps the library's batch size


def test_explicit_sizes_win():
    opts = PipelineOptions(batch_size=40, steps=7, reference_steps=3)
    s = plan_sizes(10_000, 1000, opts)
    assert (s.batch_size, s.super_batch, s.steps, s.reference_steps) == (40, 200, 7, 3)
    assert 40 % s.n_chunks == 0
    s = plan_sizes(10_000, 1000, PipelineOptions(selector="uniform", batch_size=40))
    assert s.super_batch == 40  # uniform scores nothing: no super-batch


# ----------------------------------------------------------------------------------------------
# resume


def test_interrupted_pipeline_continues_to_the_same_result(example, tmp_path, monkeypatch):
    """A: uninterrupted, from the CSVs. B: from make-shards folders of the same CSVs (read in
    place), crashed while caching the reference, then SIGINT-ed in the middle of the learner,
    then finished. B skips what was done and ends with A's metrics, line for line."""
    opts = dict(FAST, compare=("uniform",))
    a = pipeline(example["pool"], example["curated"], example["eval"], tmp_path / "a", **opts)
    assert a["interrupted"] is None
    assert a["stages"] == {
        "data": "done", "reference": "done", "cache": "done", "jest": "done",
        "uniform": "done", "report": "done",
    }  # fmt: skip

    shards = {}
    for name, csv in example.items():
        shards[name] = tmp_path / "shards" / name
        make_shards(csv, shards[name], image_size=28, channels=1, progress=False)
    args = (shards["pool"], shards["curated"], shards["eval"], tmp_path / "b")

    import jestkit.data as data_mod

    def crash(*a, **k):
        raise RuntimeError("simulated crash while caching")

    with monkeypatch.context() as m:
        m.setattr(data_mod.ReferenceCache, "build", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            pipeline(*args, **opts)

    learner = tmp_path / "b" / "runs" / "jest" / "metrics.jsonl"
    write = MetricsWriter.write

    def sigint_at_step_13(self, record):
        write(self, record)
        if self.path == learner and record.get("step") == 13 and not record.get("final"):
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does: the loop checkpoints and stops

    with monkeypatch.context() as m:
        m.setattr(MetricsWriter, "write", sigint_at_step_13)
        b = pipeline(*args, **opts)
    assert b["interrupted"] == "jest"
    assert b["stages"] == {
        "data": "skipped", "reference": "skipped", "cache": "done", "jest": "interrupted"
    }  # fmt: skip
    stopped = read_metrics(learner)[-1]
    assert "final" not in stopped and 13 <= stopped["step"] < FAST["steps"]
    assert latest_checkpoint(learner.parent).name == f"step-{stopped['step']:08d}"

    b = pipeline(*args, **opts)
    assert b["interrupted"] is None
    assert b["stages"] == {
        "data": "skipped", "reference": "skipped", "cache": "skipped", "jest": "resumed",
        "uniform": "done", "report": "done",
    }  # fmt: skip
    assert not (tmp_path / "b" / "data" / "pool").exists()  # shards at the model's size: in place
    for run in ("reference", "jest", "uniform"):
        assert _lines(tmp_path / "b" / "runs" / run) == _lines(tmp_path / "a" / "runs" / run), run
        assert b["runs"][run] == a["runs"][run]
    ra = json.loads((tmp_path / "a" / "report.json").read_text())
    rb = json.loads((tmp_path / "b" / "report.json").read_text())
    for name in ("jest", "uniform", "reference"):
        for key in ("final_metric", "final_eval", "steps_to_target", "flops_to_target"):
            assert ra["methods"][name][key] == rb["methods"][name][key]
    # The report's numbers are the runs' final lines.
    for name in ("jest", "uniform"):
        final = read_metrics(tmp_path / "a" / "runs" / name / "metrics.jsonl")[-1]
        assert ra["methods"][name]["final_metric"] == final["eval/retrieval_r1"]
        assert ra["methods"][name]["final_eval"]["eval/zeroshot_top1"]["mean"] == pytest.approx(
            final["eval/zeroshot_top1"]
        )

    # Finished: a re-run redoes nothing but the report; other options are refused.
    again = pipeline(*args, **opts)
    assert {k for k, v in again["stages"].items() if v != "skipped"} == {"report"}
    with pytest.raises(JestkitError, match=r"other inputs or options.*steps: 24 before, 30 now"):
        pipeline(*args, **{**opts, "steps": 30})
    with pytest.raises(JestkitError, match="--pool changed"):
        pipeline(shards["curated"], *args[1:], **opts)


# ----------------------------------------------------------------------------------------------
# messy data

GREEK = ("μηδέν", "ένα", "δύο", "τρία", "τέσσερα", "πέντε", "έξι", "επτά", "οκτώ", "εννέα")
JAPANESE = ("ゼロ", "いち", "に", "さん", "よん", "ご", "ろく", "なな", "はち", "きゅう")
MODES = ("L", "RGB", "RGBA", "P")


def _messy_csv(path, rows):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["image", "caption", "label", "class_name"])
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """Digits (8x8) saved in four image modes, captioned in Greek and Japanese, with EVAL
    overlapping POOL and CURATED larger than POOL; one pool row points at a missing file."""
    d = tmp_path_factory.mktemp("messy")
    (d / "img").mkdir()
    images, labels = load_digits()
    rng = np.random.default_rng(1)
    order = rng.permutation(len(images))
    rows = []
    for j, i in enumerate(order[:700].tolist()):
        mode = MODES[j % len(MODES)]
        px = (images[i] * (255 / 16)).astype(np.uint8)
        img = Image.fromarray(px, "L")
        if mode == "RGB":
            img = Image.merge("RGB", (img, img.point(lambda v: v // 2), img))
        elif mode == "RGBA":
            img = Image.merge("RGBA", (img, img, img, Image.new("L", img.size, 255)))
        elif mode == "P":
            img = img.convert("RGB").convert("P")
        img.save(d / "img" / f"{i}.png")
        y = int(labels[i])
        words = GREEK if j % 2 else JAPANESE
        cap = f"{words[y]} の画像" if words is JAPANESE else f"ψηφίο {words[y]}"
        rows.append({"image": f"img/{i}.png", "caption": cap, "label": y, "class_name": GREEK[y]})
    pool, curated, ev = rows[:250], rows[250:600], rows[600:] + rows[:17]  # 17 overlap
    pool = [*pool, {"image": "img/missing.png", "caption": "λείπει", "label": 0, "class_name": ""}]
    for name, part in (("pool", pool), ("curated", curated), ("eval", ev)):
        _messy_csv(d / f"{name}.csv", part)
    return d


def test_messy_user_data_works_and_is_reported(messy, tmp_path, capsys):
    d = messy
    out = tmp_path / "out"
    result = pipeline(d / "pool.csv", d / "curated.csv", d / "eval.csv", out, **FAST)
    said = capsys.readouterr()
    assert result["interrupted"] is None

    # Another image size: resized by the transform, said once for all three inputs.
    n_images = 250 + 350 + 117
    resized = [line for line in said.out.splitlines() if "resized" in line]
    assert len(resized) == 1 and f"resized {n_images} of {n_images} image(s) to 28x28" in resized[0]
    assert "mlp-tiny-28" in resized[0] and "8x8" in resized[0]
    # Colour present -> RGB; the other modes converted and counted (per input image written).
    written = {m: 0 for m in MODES}
    for j in [*range(700), *range(17)]:  # every row once, the 17 overlapping ones again in EVAL
        written[MODES[j % len(MODES)]] += 1
    expected = ", ".join(f"{m} {written[m]}" for m in sorted(written) if m != "RGB")
    n_conv = sum(v for m, v in written.items() if m != "RGB")
    assert f"converted {n_conv} image(s) to RGB ({expected})" in said.out
    manifest = json.loads((out / "data" / "dataset.json").read_text())
    assert (manifest["image_size"], manifest["in_channels"]) == (28, 3)

    # Warnings: the overlap (with its count), CURATED > POOL, the skipped row.
    warnings = "\n".join(result["warnings"])
    assert (
        "17 of 117 EVAL examples have an image that is also in POOL (17 with the same" in warnings
    )
    assert "CURATED (350 examples) is larger than POOL (250)" in warnings
    assert "missing file" in warnings
    assert "17 of 117" in said.err  # printed, not only returned

    # Other scripts: the learner's tokenizer was trained on these captions and knows every one.
    _, tok = load_pretrained(latest_checkpoint(out / "runs" / "jest"))
    pool = load_split(out / "data" / "pool" / "train")
    ids = tok(list(pool.captions))
    assert not (ids == 1).any()  # [UNK] = 1
    distinct = {c: tuple(r) for c, r in zip(pool.captions, ids.tolist(), strict=True)}
    assert len(set(distinct.values())) == len(distinct)  # different captions, different tokens
    # Zero-shot with the Greek class names of the class_name column, and finite metrics.
    assert manifest["classes"] == list(GREEK)
    for run in ("reference", "jest"):
        final = result["runs"][run]
        for key in ("eval/i2t_r1", "eval/t2i_r1", "eval/zeroshot_top1"):
            assert math.isfinite(final[key]), (run, key)


def test_shards_of_another_size_are_converted_keeping_uids(tmp_path, capsys):
    images, labels = load_digits()
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(40):
        Image.fromarray((images[i] * 15).astype(np.uint8), "L").save(tmp_path / "img" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "caption": f"digit {labels[i]}", "label": 0})
    _messy_csv(tmp_path / "all.csv", [{**r, "class_name": "x"} for r in rows])
    inputs = {}
    for name, size in (("pool", 8), ("curated", 28), ("eval", 16)):
        make_shards(tmp_path / "all.csv", tmp_path / name, image_size=size, progress=False)
        inputs[name] = resolve_input(name, tmp_path / name)
    opts = PipelineOptions(model="mlp-tiny-28", progress=False)
    warnings: list[str] = []
    data, status = prepare_data(inputs, tmp_path / "out", opts, warnings)
    assert status == "done" and not warnings
    out = capsys.readouterr().out
    assert out.count("resized") == 1 and "resized 80 of 80 image(s) to 28x28" in out
    assert inputs["curated"].split_dir == (tmp_path / "curated" / "train").resolve()  # in place
    for name in ("pool", "eval"):
        src, dst = load_split(tmp_path / name), load_split(inputs[name].split_dir)
        assert dst.uids == src.uids and dst.captions == src.captions
        assert dst.images.shape[1:] == (1, 28, 28)
        assert (dst.meta["image_path"] == src.meta["image_path"]).all()
    manifest = json.loads((data / "dataset.json").read_text())
    assert {k: v["count"] for k, v in manifest["splits"].items()} == dict.fromkeys(inputs, 40)


def test_uniform_alone_needs_no_reference(example, tmp_path):
    r = pipeline(
        example["pool"], example["curated"], example["eval"], tmp_path / "u",
        **{**FAST, "selector": "uniform", "steps": 6},
    )  # fmt: skip
    assert r["stages"]["reference"] == r["stages"]["cache"] == "not needed"
    assert set(r["runs"]) == {"uniform"} and not (tmp_path / "u" / "runs" / "reference").exists()
    cfg = json.loads((tmp_path / "u" / "runs" / "uniform" / "config.json").read_text())
    assert cfg["selection"]["reference_cache"] == ""
    assert cfg["train"]["batch_size"] == r["sizes"]["batch_size"] == r["sizes"]["super_batch"]
    suite = json.loads((tmp_path / "u" / "suite.json").read_text())
    assert [run["name"] for run in suite["runs"]] == ["uniform"]


def test_flexi_jest_scores_at_low_resolution(example, tmp_path):
    r = pipeline(
        example["pool"], example["curated"], example["eval"], tmp_path / "f",
        **{**FAST, "model": "vit-tiny-28", "selector": "flexi-jest", "steps": 4,
           "reference_steps": 4},
    )  # fmt: skip
    assert r["interrupted"] is None and set(r["runs"]) == {"reference", "flexi-jest"}
    cfg = json.loads((tmp_path / "f" / "runs" / "flexi-jest" / "config.json").read_text())
    assert cfg["selection"]["method"] == "flexi-jest" and cfg["train"]["multires_fraction"] == 0.5
    last = read_metrics(tmp_path / "f" / "runs" / "flexi-jest" / "metrics.jsonl")[-2]
    # Scoring at the low resolution costs fewer FLOPs per example than training at full resolution.
    score = last["flops/learner_score"] / last["super_batch_examples"]
    assert 0 < score < last["flops/learner_train"] / last["examples_seen"] / 3


# ----------------------------------------------------------------------------------------------
# errors


def test_bad_input_is_refused_with_a_clear_message(example, tmp_path):
    e = example
    cases = [
        (dict(pool=tmp_path / "nope"), r"--pool '.*nope': no such file or folder"),
        (dict(curated=tmp_path), r"--curated '.*': .*not a split folder"),
        (dict(eval=e["pool"].with_suffix(".txt")), r"--eval '.*pool.txt': no such file"),
        (dict(filter_ratio=1.5), r"--filter-ratio must be in \(0, 1\).*got 1.5"),
        (dict(filter_ratio=0.0), r"--filter-ratio must be in \(0, 1\)"),
        (dict(model="resnet-9000"), r"--model 'resnet-9000': unknown model; known models: "),
        (dict(selector="greedy"), r"--selector: unknown 'greedy'; known: \['jest'"),
        (dict(compare=("jest",)), r"--compare jest: that is the --selector itself"),
        (dict(compare=("best",)), r"--compare: unknown selector 'best'"),
        (dict(selector="flexi-jest"), r"flexi-jest .*needs a FlexiViT.*'mlp-tiny-28'"),
        (dict(steps=0), r"--steps must be an integer >= 1, got 0"),
        (dict(overrides=("train.stepz=3",)), r"unknown key 'stepz'"),
        (dict(batch_size=4096), r"--pool has 1137 usable example\(s\), fewer than one super-batch"),
    ]
    (tmp_path / "notes.txt").write_text("hello")
    cases.append((dict(pool=tmp_path / "notes.txt"), r"--pool .*notes.txt.*not a shard folder"))
    for i, (change, message) in enumerate(cases):
        args = {"pool": e["pool"], "curated": e["curated"], "eval": e["eval"], **FAST}
        args.update(change)
        with pytest.raises(JestkitError, match=message):
            pipeline(
                args.pop("pool"), args.pop("curated"), args.pop("eval"), tmp_path / f"o{i}", **args
            )
        assert not (tmp_path / f"o{i}" / "runs").exists()  # refused before any training


def test_cli_errors_without_traceback(example, tmp_path, capsys):
    base = ["pipeline", "--curated", str(example["curated"]), "--eval", str(example["eval"])]
    assert cli([*base, "--pool", str(tmp_path / "x.csv"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "jestkit pipeline: error: --pool" in err and "no such file" in err
    assert "Traceback" not in err
    assert cli(["pipeline", "--pool", str(example["pool"])]) == 2
    assert "--curated, --eval, --out required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: an unknown selector is a usage error
        cli([*base, "--pool", str(example["pool"]), "--out", "o", "--selector", "greedy"])
    assert exc.value.code == 2 and "invalid choice: 'greedy'" in capsys.readouterr().err


def test_every_cli_option_is_documented():
    """docs/your-data.md's option table lists exactly the options `jestkit pipeline` takes."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = {s for a in parser._actions for s in a.option_strings if s.startswith("--")}
    doc = (Path(__file__).resolve().parents[1] / "docs" / "your-data.md").read_text()
    documented = set(re.findall(r"^\| `(--[a-z-]+)` \|", doc, flags=re.M))
    assert documented == options - {"--help"}


def test_zeroshot_class_names(tmp_path):
    """Names from --classes, else the class_name column; conflicts and gaps are reported."""
    (tmp_path / "img").mkdir()
    rows = []
    for i, (label, name) in enumerate([(0, "cat"), (2, "dog"), (0, "cat"), (-1, "")]):
        Image.fromarray(np.full((4, 4), 40 * i, np.uint8), "L").save(tmp_path / "img" / f"{i}.png")
        rows.append(
            {"image": f"img/{i}.png", "caption": f"c{i}", "label": label, "class_name": name}
        )

    def eval_input(rows, name):
        _messy_csv(tmp_path / f"{name}.csv", rows)
        make_shards(tmp_path / f"{name}.csv", tmp_path / name, image_size=4, progress=False)
        return resolve_input("eval", tmp_path / name)

    ev, warnings = eval_input(rows, "a"), []
    assert zeroshot_classes(ev, PipelineOptions(), warnings) == ["cat", "1", "dog"]
    assert "no class_name for label(s) [1]" in warnings[0]
    opts = PipelineOptions(classes=("x", "y", "z"))
    assert zeroshot_classes(ev, opts, []) == ["x", "y", "z"]
    with pytest.raises(JestkitError, match="--classes names 2 classes but EVAL has label 2"):
        zeroshot_classes(ev, PipelineOptions(classes=("x", "y")), [])
    bad = eval_input([*rows, {**rows[0], "caption": "c9", "class_name": "kitten"}], "b")
    with pytest.raises(JestkitError, match="label 0 is called both 'cat' and 'kitten'"):
        zeroshot_classes(bad, PipelineOptions(), [])
    nameless, warnings = eval_input([{**r, "class_name": ""} for r in rows], "c"), []
    assert zeroshot_classes(nameless, PipelineOptions(), warnings) is None
    assert "no class names: pass --classes" in warnings[0]
    unlabelled = eval_input([{**r, "label": -1} for r in rows], "d")
    assert zeroshot_classes(unlabelled, PipelineOptions(), []) is None
