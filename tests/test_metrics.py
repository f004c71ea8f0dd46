"""metrics.jsonl: strict JSON lines, torn lines, resume truncation, TensorBoard, progress bar."""

from __future__ import annotations

import io
import json
import os
import sys

import numpy as np
import pytest
import torch

import jestkit.metrics as jm
from jestkit.errors import JestkitError


def strict_loads(line: str) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(line, parse_constant=refuse)


def record(step: int) -> dict:
    return {"step": step, "loss": 1.0 / (step + 1), "selection": {"noisy_frac": step / 10}}


def test_roundtrip_types_and_nonfinite(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    with jm.MetricsWriter(path) as w:
        w.write({"step": np.int64(0), "loss": np.float32(0.5), "t": torch.tensor(2.5), "n": torch.tensor(3),
                 "flag": np.bool_(True), "vec": np.arange(3), "grid": torch.eye(2), "name": "jest",
                 "nan": float("nan"), "inf": torch.tensor(float("inf")), "nested": {"x": -np.inf, "ok": 1}})  # fmt: skip
        w.write(record(1))
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first = strict_loads(lines[0])  # valid strict JSON: no NaN/Infinity tokens
    assert first == {"step": 0, "loss": 0.5, "t": 2.5, "n": 3, "flag": True, "vec": [0, 1, 2],
                     "grid": [[1.0, 0.0], [0.0, 1.0]], "name": "jest", "nan": None, "inf": None,
                     "nested": {"x": None, "ok": 1}}  # fmt: skip
    assert type(first["n"]) is int and jm.read_metrics(path) == [first, record(1)]


@pytest.mark.parametrize(
    "bad", [{"loss": 1.0}, {"step": 1.0}, {"step": True}, {"step": "3"}, [("step", 1)]]
)
def test_step_is_required(tmp_path, bad):
    with (
        jm.MetricsWriter(tmp_path / "m.jsonl") as w,
        pytest.raises(JestkitError, match=r"step|dict"),
    ):
        w.write(bad)
    assert (tmp_path / "m.jsonl").read_bytes() == b""


def test_unloggable_value_names_key(tmp_path):
    with (
        jm.MetricsWriter(tmp_path / "m.jsonl") as w,
        pytest.raises(JestkitError, match=r"record\.extra\.obj"),
    ):
        w.write({"step": 0, "extra": {"obj": object()}})


def test_torn_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    with jm.MetricsWriter(path) as w:
        for s in range(3):
            w.write(record(s))
    with open(path, "ab") as f:
        f.write(b'{"step": 3, "lo')  # killed mid-write
    assert [r["step"] for r in jm.read_metrics(path)] == [0, 1, 2]
    with jm.MetricsWriter(path) as w:  # reopening drops the torn tail before appending
        w.write(record(3))
    assert [strict_loads(x)["step"] for x in path.read_text().splitlines()] == [0, 1, 2, 3]


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"step":0}\n{"step":1}')
    assert jm.read_metrics(path) == [{"step": 0}, {"step": 1}]
    with jm.MetricsWriter(path) as w:
        w.write({"step": 2})
    assert path.read_bytes() == b'{"step":0}\n{"step":1}\n{"step":2}\n'


def test_damaged_middle_line_is_an_error(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"step":0}\n{"st\n{"step":2}\n')
    with pytest.raises(JestkitError, match=r"m\.jsonl:2"):
        jm.read_metrics(path)
    with pytest.raises(JestkitError, match=r"m\.jsonl:2"):
        jm.MetricsWriter(path)
    with pytest.raises(JestkitError, match="does not exist"):
        jm.read_metrics(tmp_path / "missing.jsonl")


def test_resume_truncation_matches_uninterrupted_run(tmp_path):
    """A run logging steps 0..9, vs one killed after step 6 (mid-line) and resumed from its
    checkpoint of step 4: the files end byte-identical."""
    full, resumed = tmp_path / "full.jsonl", tmp_path / "resumed.jsonl"
    with jm.MetricsWriter(full) as w:
        for s in range(10):
            w.write(record(s))
    with jm.MetricsWriter(resumed) as w:
        for s in range(7):
            w.write(record(s))
    with open(resumed, "ab") as f:
        f.write(b'{"step":7,"loss":0.1')
    with jm.MetricsWriter(resumed, truncate_after_step=4) as w:
        assert [r["step"] for r in jm.read_metrics(resumed)] == [0, 1, 2, 3, 4]
        for s in range(5, 10):
            w.write(record(s))
    assert resumed.read_bytes() == full.read_bytes()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    # A fresh start (no checkpoint to resume) in the same folder: truncate_after_step=-1 empties it.
    with jm.MetricsWriter(resumed, truncate_after_step=-1) as w:
        w.write(record(0))
    assert jm.read_metrics(resumed) == [record(0)]


def test_truncation_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.jsonl"
    with jm.MetricsWriter(path) as w:
        for s in range(5):
            w.write(record(s))
    before = path.read_bytes()

    def fail(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(JestkitError, match="No space left") as info:
        jm.MetricsWriter(path, truncate_after_step=2)
    assert str(path) in str(info.value)
    assert path.read_bytes() == before  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]


def test_fsync_every(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real(fd))
    with jm.MetricsWriter(tmp_path / "m.jsonl", fsync_every=3) as w:
        for s in range(7):
            w.write(record(s))
    assert len(calls) == 2  # after lines 3 and 6
    with pytest.raises(JestkitError, match="fsync_every"):
        jm.MetricsWriter(tmp_path / "x.jsonl", fsync_every=-1)
    with pytest.raises(JestkitError, match="truncate_after_step"):
        jm.MetricsWriter(tmp_path / "x.jsonl", truncate_after_step=2.0)


def test_unwritable_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(JestkitError, match="cannot open metrics file") as info:
        jm.MetricsWriter(blocker / "metrics.jsonl")
    assert str(blocker) in str(info.value)


def test_scalars_flatten_numeric_leaves():
    rec = {"step": 3, "loss": 0.5, "n": 2, "ok": True, "name": "x", "none": None, "t": torch.tensor(1.5),
           "eval": {"retrieval_r1": 0.25, "deep": {"a": 1}}}  # fmt: skip
    assert jm._scalars(rec) == {
        "loss": 0.5,
        "n": 2.0,
        "t": 1.5,
        "eval/retrieval_r1": 0.25,
        "eval/deep/a": 1.0,
    }


def test_tensorboard_scalars_and_purge_on_resume(tmp_path):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    tb = tmp_path / "tb"
    with jm.MetricsWriter(tmp_path / "m.jsonl", tensorboard_dir=tb) as w:
        for s in range(6):
            w.write({"step": s, "loss": float(s), "eval": {"r1": s / 10}})
    with jm.MetricsWriter(tmp_path / "m.jsonl", tensorboard_dir=tb, truncate_after_step=2) as w:
        for s in range(3, 5):
            w.write({"step": s, "loss": 10.0 + s, "eval": {"r1": s / 10}})
    acc = ea.EventAccumulator(str(tb), purge_orphaned_data=True)
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"loss", "eval/r1"}
    loss = [(e.step, e.value) for e in acc.Scalars("loss")]
    assert loss == [
        (0, 0.0),
        (1, 1.0),
        (2, 2.0),
        (3, 13.0),
        (4, 14.0),
    ]  # steps 3..5 of the killed run purged


def test_tensorboard_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(
        sys.modules, "torch.utils.tensorboard", None
    )  # import now raises ImportError
    with pytest.raises(JestkitError, match=r"tensorboard_dir=.*pip install"):
        jm.MetricsWriter(tmp_path / "m.jsonl", tensorboard_dir=tmp_path / "tb")


def test_progress_bar_postfix_and_disable():
    out = io.StringIO()
    with jm.ProgressBar(total=10, file=out) as bar:
        bar.update(1, loss=0.51234)
        assert "loss=0.5123" in bar.postfix and "retrieval_r1" not in bar.postfix
        bar.update(2, loss=0.4, metrics={"retrieval_r1": 0.125, "i2t_r1": 0.1})
        bar.update(3, loss=0.3)  # the eval metric stays on the bar between evaluations
        assert "loss=0.3000" in bar.postfix and "retrieval_r1=0.1250" in bar.postfix
        assert bar._bar.n == 3
        bar.update(loss=0.2)  # no step: one step on
        assert bar._bar.n == 4
        bar.update(loss=0.1, **{"eval/retrieval_r1": 0.25})  # prefixed names, as keywords
        assert bar._bar.n == 5 and "retrieval_r1=0.2500" in bar.postfix
    assert "loss=0.1000, retrieval_r1=0.2500" in out.getvalue()
    quiet = io.StringIO()
    with jm.ProgressBar(total=10, file=quiet, disable=True) as bar:
        bar.update(5, loss=1.0, metrics={"retrieval_r1": 0.5})
    assert quiet.getvalue() == ""
