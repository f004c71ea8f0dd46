"""Atomic checkpoints: layout, round trip, crash at every I/O call, SIGKILL, failing writes, pruning."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import jestkit.checkpoint as ck
from jestkit.errors import JestkitError

# A stand-in for jestkit.models' export format (model.safetensors + config.json), so these tests
# exercise the checkpoint protocol alone; test_real_model_roundtrip uses the real one. The same
# source runs in the SIGKILL child process.
FAKE_MODEL_IO = """
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class FakeModel(torch.nn.Linear):
    def __init__(self, d_in=4, d_out=3):
        super().__init__(d_in, d_out)
        self.config = {"d_in": d_in, "d_out": d_out}


def fake_write_model_files(directory, model, tokenizer):
    directory = Path(directory)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({"model": model.config, "tokenizer": tokenizer}))


def fake_load_pretrained(directory, device="cpu"):
    cfg = json.loads((Path(directory) / "config.json").read_text())
    model = FakeModel(**cfg["model"])
    model.load_state_dict(load_file(str(Path(directory) / "model.safetensors"), device=str(device)))
    return model.to(device), cfg["tokenizer"]
"""
_ns: dict = {}
exec(FAKE_MODEL_IO, _ns)
FakeModel = _ns["FakeModel"]


@pytest.fixture(autouse=True)
def fake_models(monkeypatch):
    monkeypatch.setattr(ck, "_write_model_files", _ns["fake_write_model_files"])
    monkeypatch.setattr(ck, "_load_pretrained", _ns["fake_load_pretrained"])


def make_model(step: int) -> torch.nn.Module:
    m = FakeModel()
    with torch.no_grad():
        m.weight.fill_(float(step))
        m.bias.fill_(-float(step))
    return m


def state_for(step: int, version: int = 0) -> dict:
    return {
        "step": step, "version": version, "payload": torch.full((64,), float(step)),
        "nested": {"lr": 0.1 * step, "ids": [step, 1]},
    }  # fmt: skip


def save(out: Path, step: int, version: int = 0, **kw) -> Path:
    return ck.save_checkpoint(
        out, step, make_model(step), {"vocab": "v"}, state_for(step, version), **kw
    )


def assert_consistent(path: Path) -> int:
    """A checkpoint whose files all belong to one step; returns that step."""
    assert ck.verify_checkpoint(path, full=True) is None
    model, tok, state = ck.load_checkpoint(path)
    step = ck.checkpoint_step(path)
    assert state["step"] == step
    assert torch.equal(state["payload"], torch.full((64,), float(step)))
    assert torch.all(model.weight == step) and tok == {"vocab": "v"}
    return step


def tmp_leftovers(out: Path) -> list[str]:
    return sorted(
        p.name
        for p in (out / "checkpoints").iterdir()
        if ".tmp-" in p.name or ".replaced-" in p.name
    )


# ----------------------------------------------------------------------------- layout and loading


def test_layout_roundtrip_and_pointer(tmp_path):
    opt_model = make_model(7)
    opt = torch.optim.AdamW(opt_model.parameters(), lr=1e-3)
    opt_model(torch.ones(2, 4)).sum().backward()
    opt.step()
    state = {
        "step": 7,
        "optimizer": opt.state_dict(),
        "cursor": {"epoch": 1, "pos": 96},
        "config": {"b": 8},
    }
    path = ck.save_checkpoint(tmp_path, 7, opt_model, {"vocab": "v"}, state)
    assert path == tmp_path / "checkpoints" / "step-00000007"
    names = {p.name for p in path.iterdir()}
    assert {"model.safetensors", "config.json", "train_state.pt", "COMPLETE"} <= names
    manifest = json.loads((path / "COMPLETE").read_text())
    assert set(manifest["files"]) == names - {"COMPLETE"} and manifest["step"] == 7
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-00000007"
    assert ck.latest_checkpoint(tmp_path) == path
    model, tok, loaded = ck.load_checkpoint(path, verify_hashes=True)
    assert torch.equal(model.weight, opt_model.weight) and tok == {"vocab": "v"}
    assert loaded["cursor"] == state["cursor"] and loaded["config"] == state["config"]
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["optimizer"])
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(torch.as_tensor(v), torch.as_tensor(opt2.state_dict()["state"][0][k]))
    assert tmp_leftovers(tmp_path) == []


def test_numpy_state_falls_back_to_full_unpickle(tmp_path):
    state = {"step": 1, "perm": np.arange(5)}
    path = ck.save_checkpoint(tmp_path, 1, make_model(1), {}, state)
    assert np.array_equal(ck.load_train_state(path)["perm"], np.arange(5))


def test_latest_none_and_newest(tmp_path):
    assert ck.latest_checkpoint(tmp_path) is None
    assert ck.latest_checkpoint(tmp_path / "missing") is None
    for s in (100, 200, 300):
        save(tmp_path, s, keep_last=None)
    assert ck.latest_checkpoint(tmp_path).name == "step-00000300"
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == [
        f"step-00000{s}" for s in (100, 200, 300)
    ]


def test_resave_same_step_replaces_it(tmp_path):
    save(tmp_path, 5)
    ck.save_checkpoint(tmp_path, 5, make_model(9), {"vocab": "v"}, {"step": 5, "x": 1})
    path = ck.latest_checkpoint(tmp_path, verify_hashes=True)
    model, _, state = ck.load_checkpoint(path)
    assert state == {"step": 5, "x": 1} and torch.all(model.weight == 9)
    assert tmp_leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- never a partial checkpoint


def test_partial_and_corrupt_checkpoints_are_skipped(tmp_path):
    root = tmp_path / "checkpoints"
    save(tmp_path, 1)
    save(tmp_path, 2)
    # A leftover temp dir of a dead save, even a complete-looking one, is never read.
    (root / "step-00000009.tmp-999999").mkdir()
    # A final-named folder without COMPLETE (e.g. restored from a partial copy) is skipped.
    (root / "step-00000008").mkdir()
    (root / "step-00000008" / "train_state.pt").write_bytes(b"junk")
    assert ck.latest_checkpoint(tmp_path).name == "step-00000002"
    # latest points at a truncated checkpoint: fall back (with a warning) to the newest good one.
    with open(root / "step-00000002" / "model.safetensors", "r+b") as f:
        f.truncate(10)
    with pytest.warns(UserWarning, match="falling back"):
        assert ck.latest_checkpoint(tmp_path).name == "step-00000001"
    # Same size, one flipped byte: only the full hash check sees it.
    f = root / "step-00000001" / "train_state.pt"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    assert ck.verify_checkpoint(root / "step-00000001") is None
    assert "sha256" in ck.verify_checkpoint(root / "step-00000001", full=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ck.latest_checkpoint(tmp_path, verify_hashes=True) is None
    with pytest.raises(JestkitError, match="step-00000002"):
        ck.load_checkpoint(root / "step-00000002")


@pytest.mark.parametrize("pointer", [None, "garbage\n", "../../etc\n", "step-00000007\n"])
def test_missing_or_bad_pointer_falls_back_to_newest(tmp_path, pointer):
    save(tmp_path, 3, keep_last=None)
    save(tmp_path, 4, keep_last=None)
    latest = tmp_path / "checkpoints" / "latest"
    if pointer is None:
        latest.unlink()
    else:
        latest.write_text(pointer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ck.latest_checkpoint(tmp_path).name == "step-00000004"


class _Kill(BaseException):
    """A simulated SIGKILL: not an Exception, and cleanup is disabled while it propagates."""


def _crash_at(monkeypatch, k: int) -> list[int]:
    """Make the k-th I/O call of a save raise _Kill; returns the call counter."""
    calls = [0]

    def wrap(fn):
        def inner(*a, **kw):
            calls[0] += 1
            if calls[0] == k:
                raise _Kill
            return fn(*a, **kw)

        return inner

    for name in ("rename", "replace", "fsync", "mkdir"):
        monkeypatch.setattr(os, name, wrap(getattr(os, name)))
    monkeypatch.setattr(torch, "save", wrap(torch.save))
    monkeypatch.setattr(ck, "_write_model_files", wrap(ck._write_model_files))
    monkeypatch.setattr(ck, "_remove", lambda p: None)  # a killed process cleans nothing up
    return calls


@pytest.mark.parametrize("resave", [False, True], ids=["new-step", "same-step"])
def test_kill_at_every_io_call(tmp_path, monkeypatch, resave):
    """Kill a save at each of its I/O calls in turn: latest is always a whole checkpoint."""
    k, outcomes = 1, set()
    while True:
        out = tmp_path / f"k{k}"
        save(out, 1)
        save(out, 2, keep_last=1)
        with monkeypatch.context() as mp:
            calls = _crash_at(mp, k)
            try:
                save(out, 2 if resave else 3, version=1, keep_last=1)
                finished = True
            except _Kill:
                finished = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = ck.latest_checkpoint(out)
            outcomes.add((assert_consistent(path), ck.load_train_state(path)["version"]))
            assert save(out, 4, keep_last=1).name == "step-00000004"  # the next save cleans up
        assert tmp_leftovers(out) == []
        assert assert_consistent(ck.latest_checkpoint(out)) == 4
        if finished:
            break
        k += 1
    assert k == calls[0] + 1 and k > 10  # every call point was a kill point
    assert outcomes == {(2, 0), (2 if resave else 3, 1)}  # the old or the new, nothing between


# ----------------------------------------------------------------------------- real SIGKILL

CHILD = """
import sys, torch
import jestkit.checkpoint as ck
{fake}
ck._write_model_files = fake_write_model_files
out, start = sys.argv[1], int(sys.argv[2])
step = start
while True:
    m = FakeModel()
    with torch.no_grad():
        m.weight.fill_(float(step)); m.bias.fill_(-float(step))
    state = {{"step": step, "payload": torch.full((64,), float(step)), "big": torch.randn(1 << 19)}}
    ck.save_checkpoint(out, step, m, {{"vocab": "v"}}, state, keep_last=2)
    step += 1
"""


def test_sigkill_during_saves(tmp_path):
    """A real process saving in a loop, SIGKILLed at random moments, then restarted from latest."""
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(fake=textwrap.dedent(FAKE_MODEL_IO)))
    out = tmp_path / "run"
    rng = np.random.default_rng(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = 1
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, str(script), str(out), str(start)], env=env)
        try:
            deadline = time.monotonic() + 300  # a hang guard, not a timing assertion
            while (latest := ck.latest_checkpoint(out)) is None or ck.checkpoint_step(
                latest
            ) < start:
                assert proc.poll() is None and time.monotonic() < deadline, "child died or hung"
                time.sleep(0.01)
            time.sleep(float(rng.uniform(0.0, 0.3)))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            step = assert_consistent(ck.latest_checkpoint(out))
        assert step >= start
        start = step + 1


# ----------------------------------------------------------------------------- failing writes


def _enospc(*a, **kw):
    raise OSError(errno.ENOSPC, "No space left on device")


def _torch_save_full(*a, **kw):  # what torch.save raises on a full disk (measured on a tmpfs)
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")


def _safetensors_full(*a, **kw):  # what safetensors raises on a full disk
    from safetensors import SafetensorError

    raise SafetensorError(
        "Error while serializing: I/O error: No space left on device (os error 28)"
    )


@pytest.mark.parametrize(
    ("target", "fail"),
    [
        (lambda: (torch, "save"), _torch_save_full),
        (lambda: (ck, "_write_model_files"), _safetensors_full),
        (lambda: (torch, "save"), _enospc),
        (lambda: (os, "fsync"), _enospc),
        (lambda: (os, "rename"), _enospc),
        (lambda: (os, "replace"), _enospc),  # the `latest` pointer
    ],
    ids=["torch.save", "safetensors", "torch.save-oserror", "fsync", "rename", "pointer"],
)
def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch, target, fail):
    save(tmp_path, 1)
    latest_file = tmp_path / "checkpoints" / "latest"
    before = latest_file.read_bytes()
    with monkeypatch.context() as mp:
        mp.setattr(*target(), fail)
        with pytest.raises(JestkitError, match=r"No space left|unexpected pos") as info:
            save(tmp_path, 2)
    assert str(tmp_path / "checkpoints") in str(info.value)
    assert latest_file.read_bytes() == before
    assert assert_consistent(ck.latest_checkpoint(tmp_path)) == 1
    assert tmp_leftovers(tmp_path) == []


def test_read_only_output_dir(tmp_path, monkeypatch):
    save(tmp_path, 1)

    def denied(*a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", str(a[0]))

    with monkeypatch.context() as mp:
        mp.setattr(os, "mkdir", denied)  # root ignores chmod, so simulate the denial
        with pytest.raises(JestkitError, match="Permission denied") as info:
            save(tmp_path, 2)
    assert "step-00000002" in str(info.value)
    assert assert_consistent(ck.latest_checkpoint(tmp_path)) == 1


# ----------------------------------------------------------------------------- pruning


def test_keep_last_prunes_oldest(tmp_path):
    for s in range(1, 6):
        save(tmp_path, s, keep_last=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-00000004", "step-00000005"]
    for s in range(6, 9):
        save(tmp_path, s, keep_last=None)
    assert len(ck.list_checkpoints(tmp_path)) == 5


def test_pruning_never_deletes_newest_verified_or_newer(tmp_path):
    for s in (1, 2, 3):
        save(tmp_path, s, keep_last=None)
    # A corrupt folder with a higher step is left alone for inspection, and does not count.
    bad = tmp_path / "checkpoints" / "step-00000009"
    bad.mkdir()
    # Resuming from step 2 and saving it again: the newest verified (3) and the new one survive.
    save(tmp_path, 2, keep_last=1)
    names = [p.name for p in ck.list_checkpoints(tmp_path)]
    assert names == ["step-00000002", "step-00000003", "step-00000009"]
    assert ck.latest_checkpoint(tmp_path).name == "step-00000002"


# ----------------------------------------------------------------------------- bad input


def test_bad_arguments(tmp_path):
    with pytest.raises(JestkitError, match="step"):
        ck.save_checkpoint(tmp_path, -1, make_model(1), {}, {})
    with pytest.raises(JestkitError, match="keep_last"):
        ck.save_checkpoint(tmp_path, 1, make_model(1), {}, {}, keep_last=0)
    with pytest.raises(JestkitError, match="train_state"):
        ck.save_checkpoint(tmp_path, 1, make_model(1), {}, [1, 2])
    with pytest.raises(JestkitError, match="does not exist"):
        ck.load_checkpoint(tmp_path / "nope")
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the output folder should be")
    with pytest.raises(JestkitError, match="cannot write checkpoint"):
        save(blocker, 1)


def test_model_config_mismatch(tmp_path):
    path = save(tmp_path, 1)
    ck.load_checkpoint(path, model_config={"d_in": 4, "d_out": 3})
    with pytest.raises(JestkitError, match=r"d_out=3 \(expected 5\)"):
        ck.load_checkpoint(path, model_config={"d_in": 4, "d_out": 5})


def test_resolve_resume(tmp_path):
    assert ck.resolve_resume(tmp_path, None) is None
    assert ck.resolve_resume(tmp_path, "latest") is None  # killed before its first checkpoint
    path = save(tmp_path, 1)
    assert ck.resolve_resume(tmp_path, "latest") == path
    assert ck.resolve_resume(tmp_path, str(path)) == path
    with pytest.raises(JestkitError, match="no such"):
        ck.resolve_resume(tmp_path, str(tmp_path / "missing"))
    (path / "COMPLETE").unlink()
    with pytest.raises(JestkitError, match="not a complete checkpoint"):
        ck.resolve_resume(tmp_path, str(path))


# ----------------------------------------------------------------------------- with jestkit.models


def test_real_model_roundtrip_and_config_mismatch(tmp_path, monkeypatch):
    models = pytest.importorskip("jestkit.models")
    monkeypatch.undo()  # the real model files, not the stand-in
    model = models.create_model("mlp-tiny-28")
    tok = models.Tokenizer.train(
        ["a red shirt", "blue trousers", "a bag"], vocab_size=64, context_length=32
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    path = ck.save_checkpoint(tmp_path, 3, model, tok, {"step": 3, "optimizer": opt.state_dict()})
    loaded, tok2, state = ck.load_checkpoint(path, model_config=model.config)
    assert models.model_fingerprint(loaded) == models.model_fingerprint(model)
    assert tok2 == tok and state["step"] == 3
    other = models.get_model_config("mlp-tiny-28", embed_dim=32)
    with pytest.raises(JestkitError, match=r"embed_dim=64 \(expected 32\)"):
        ck.load_checkpoint(path, model_config=other)
    # Weights that do not fit the stored config: load_pretrained names the tensor.
    bad = models.create_model("mlp-tiny-28", embed_dim=32)
    models.write_model_files(tmp_path / "other", bad, tok)
    os.replace(tmp_path / "other" / "model.safetensors", path / "model.safetensors")
    (path / "COMPLETE").write_text(  # re-seal so only the config check can object
        json.dumps({**json.loads((path / "COMPLETE").read_text()), "files": {
            n: {"size": (path / n).stat().st_size, "sha256": ""} for n in ("model.safetensors", "train_state.pt")
        }})
    )  # fmt: skip
    with pytest.raises(JestkitError, match="another model config"):
        ck.load_checkpoint(path)
