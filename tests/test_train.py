"""The training loop end to end on the `debug` preset (sklearn digits, seconds on a CPU)."""

from __future__ import annotations

import itertools
import json
import shutil

import pytest

from jestkit.checkpoint import checkpoint_name, list_checkpoints
from jestkit.cli import main as cli_main
from jestkit.config import apply_overrides, get_preset, load_config, validate
from jestkit.errors import JestkitError
from jestkit.metrics import read_metrics
from jestkit.train import lr_at, train

WALL_CLOCK = ("time", "step_time")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # One cache folder for the whole module: the dataset and reference are built once.
    monkeypatch.setenv("JESTKIT_CACHE", str(tmp_path_factory.getbasetemp() / "jestkit-cache"))


def debug(*overrides: str):
    return validate(apply_overrides(get_preset("debug"), list(overrides)))


def strip_clock(rows):
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rows]


def test_jest_run_end_to_end(tmp_path):
    out = tmp_path / "run"
    final = train(debug("train.keep_checkpoints=5", "train.checkpoint_every=10"), out)
    rows = read_metrics(out / "metrics.jsonl")
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 41))
    assert rows[-1] == final and final["final"] is True and final["step"] == 40
    # FLOP totals add up, per category and cumulatively.
    last = steps[-1]
    parts = sum(last[f"flops/{k}"] for k in ("learner_train", "learner_score", "reference"))
    assert last["flops/total"] == parts
    train_flops = [r["flops/learner_train"] for r in steps]
    assert all(b - a == train_flops[0] for a, b in itertools.pairwise(train_flops))
    # Every step selects b examples out of N = b / (1 - f) and the ledger counts N scored.
    assert last["examples_seen"] == 40 * 32 and last["super_batch_examples"] == 40 * 160
    # The eval metric improves over the initialisation (step-0 evaluation).
    assert rows[0]["step"] == 0
    assert final["eval/retrieval_r1"] > rows[0]["eval/retrieval_r1"]
    assert final["eval/zeroshot_top1"] > rows[0]["eval/zeroshot_top1"]
    # JEST picks examples the learner finds harder than the reference does.
    assert all(r["sel/score_selected_mean"] >= r["sel/score_pool_mean"] for r in steps)
    assert [checkpoint_name(s) for s in (10, 20, 30, 40)] == [p.name for p in list_checkpoints(out)]
    assert json.loads((out / "config.json").read_text())["name"] == "debug"


def test_resume_equals_uninterrupted(tmp_path):
    cfg = ("train.keep_checkpoints=5", "train.checkpoint_every=10")
    full = tmp_path / "full"
    train(debug(*cfg), full)
    # A run "killed" after step 20: its folder holds the step-20 checkpoint and the metrics
    # written so far, plus torn lines past it that the resume must drop.
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(
        full / "checkpoints" / checkpoint_name(20), part / "checkpoints" / checkpoint_name(20)
    )
    (part / "checkpoints" / "latest").write_text(checkpoint_name(20) + "\n")
    lines = (full / "metrics.jsonl").read_text().splitlines()
    (part / "metrics.jsonl").write_text("\n".join(lines[:25]) + '\n{"step": 24, "lo')
    train(debug(*cfg), part, resume="latest")
    a = strip_clock(read_metrics(full / "metrics.jsonl"))
    b = strip_clock(read_metrics(part / "metrics.jsonl"))
    assert a == b  # same selections' stats, same losses, same evals, same final line


def test_uniform_scores_nothing(tmp_path):
    final = train(debug("selection.method=uniform"), tmp_path / "u")
    rows = read_metrics(tmp_path / "u" / "metrics.jsonl")
    assert final["flops/learner_score"] == 0 and final["flops/reference"] == 0
    assert all(r["super_batch_examples"] == r["examples_seen"] for r in rows if "loss" in r)


def test_existing_run_needs_resume(tmp_path):
    train(debug("train.steps=10"), tmp_path / "r")
    with pytest.raises(JestkitError, match="--resume latest"):
        train(debug("train.steps=10"), tmp_path / "r")
    with pytest.raises(JestkitError, match="another config"):
        train(debug("train.steps=20", "optim.lr=0.01"), tmp_path / "r", resume="latest")


def test_lr_schedule_warmup_then_cosine():
    cfg = debug("optim.warmup_steps=10", "train.steps=110", "optim.lr=1.0")
    lrs = [lr_at(cfg, s) for s in range(110)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[-1] < 0.01


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["selection.filter_ratio=1.0"], "filter_ratio must be in \\(0, 1\\), got 1.0"),
        (["selection.filter_ratio=0"], "filter_ratio must be in \\(0, 1\\), got 0.0"),
        (["train.batch_size=30"], "batch_size=30 is not divisible by selection.n_chunks=4"),
        (["train.steps=ten"], "'ten' is not a valid int"),
        (["train.stepz=10"], "unknown key 'stepz'"),
        (["trian.steps=10"], "unknown section 'trian'"),
        (["selection.method=greedy"], "unknown 'greedy'"),
        (["selection.criterion=hardest"], "unknown 'hardest'"),
        (["train.tensorboard=maybe"], "'maybe' is not a valid bool"),
        (["selection.joint_weight=-2"], "joint_weight must be a finite number >= 0, got -2.0"),
    ],
)
def test_bad_config_values(overrides, message):
    with pytest.raises(JestkitError, match=message):
        load_config("debug", overrides)


def test_unknown_preset_lists_known():
    with pytest.raises(JestkitError, match=r"known presets: .*quick"):
        load_config("qiuck")


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    code = cli_main(
        ["train", "--config", "debug", "--out", str(tmp_path / "x"), "selection.filter_ratio=1.5"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "filter_ratio must be in (0, 1), got 1.5" in err
    assert "Traceback" not in err


def test_missing_reference_cache_is_an_error(tmp_path):
    cfg = debug(f"selection.reference_cache={tmp_path / 'nope'}")
    with pytest.raises(JestkitError, match="no such folder"):
        train(cfg, tmp_path / "r")


def test_nonfinite_loss_stops_with_step(tmp_path, monkeypatch):
    from jestkit.losses import SigLipLoss

    real = SigLipLoss.forward
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 15 else loss

    monkeypatch.setattr(SigLipLoss, "forward", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(JestkitError, match=r"non-finite loss .* at step 15.*step-00000010"):
        train(debug("train.checkpoint_every=10"), out)
    # The last good checkpoint is kept; the broken step is not written.
    assert [p.name for p in list_checkpoints(out)] == [checkpoint_name(10)]
    assert max(r["step"] for r in read_metrics(out / "metrics.jsonl")) == 14


def test_selection_stats_off_logs_no_diagnostics_and_selects_the_same(tmp_path):
    """`selection.stats=false` drops the k x k diagnostics, nothing else: same losses, same data."""
    on = train(debug("train.steps=6", "train.eval_every=0"), tmp_path / "on")
    off = train(
        debug("train.steps=6", "train.eval_every=0", "selection.stats=false"), tmp_path / "off"
    )
    assert on == off
    rows_on = read_metrics(tmp_path / "on" / "metrics.jsonl")
    rows_off = read_metrics(tmp_path / "off" / "metrics.jsonl")
    assert any(k.startswith("sel/score_") for k in rows_on[0])
    assert not any(k.startswith("sel/score_") for k in rows_off[0])
    for a, b in zip(rows_on[:-1], rows_off[:-1], strict=True):
        assert a["loss"] == b["loss"] and a["noisy_selected_frac"] == b["noisy_selected_frac"]


def test_a_checkpoint_that_predates_a_config_key_resumes_if_the_key_keeps_its_default():
    from jestkit.config import config_mismatch

    current = debug().to_dict()
    older = json.loads(json.dumps(current))
    del older["selection"]["score_mode"]  # as if written before `selection.score_mode` existed
    assert config_mismatch(older, current) == []
    changed = debug("selection.score_mode=rowcol").to_dict()
    assert config_mismatch(older, changed) == [
        "selection.score_mode: checkpoint 'diagonal', now 'rowcol'"
    ]
