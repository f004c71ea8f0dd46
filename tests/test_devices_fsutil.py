"""The small shared helpers: device resolution (every --device flag and train.device) and the
atomic file and folder writers (metrics, checkpoints' pointer, exports, shards, curation)."""

from __future__ import annotations

import os

import pytest
import torch

from jestkit.devices import model_device, resolve_device
from jestkit.distributed import World, rank_device
from jestkit.errors import JestkitError
from jestkit.fsutil import atomic_write, replace_dir


def test_resolve_device_names_the_flag_and_value():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(JestkitError, match="--device 'tpu9' is not a device"):
        resolve_device("tpu9")
    with pytest.raises(JestkitError, match=r"train\.device='tpu9' is not a device"):
        resolve_device("tpu9", "train.device")
    if not torch.cuda.is_available():
        with pytest.raises(JestkitError, match="--device 'cuda': CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(JestkitError, match=r"train\.device='cuda': CUDA is not available"):
            resolve_device("cuda", "train.device", local_rank=1)
        # auto never asks for CUDA on a machine without it, whatever the rank
        assert rank_device("auto", World(rank=1, world_size=2, local_rank=1)) == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_local_rank_picks_this_process_gpu():
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda:0")
    assert resolve_device("auto", local_rank=0) == torch.device("cuda:0")
    n = torch.cuda.device_count()
    with pytest.raises(JestkitError, match=f"only {n} CUDA devices"):
        resolve_device(f"cuda:{n}")


def test_model_device():
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(torch.nn.Identity(), fallback="meta") == torch.device("meta")
    assert model_device(object()) == torch.device("cpu")


def test_atomic_write_bytes_text_and_writer(tmp_path):
    path = tmp_path / "a.json"
    atomic_write(path, "old\n")
    assert path.read_text() == "old\n"
    atomic_write(path, b"new\n")
    assert path.read_bytes() == b"new\n"
    seen = []

    def writer(tmp):
        seen.append(tmp)
        tmp.write_text("from a writer")

    atomic_write(path, writer)
    assert path.read_text() == "from a writer"
    # the temporary file sat beside the target and kept its suffix (np.savez, pyarrow need it)
    assert seen[0].parent == tmp_path and seen[0].suffix == ".json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_atomic_write_failure_keeps_the_old_file_and_no_debris(tmp_path):
    path = tmp_path / "scores.parquet"
    atomic_write(path, b"old")

    def half_written(tmp):
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, half_written)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.parquet"]


def test_replace_dir_swaps_a_finished_folder_in(tmp_path):
    out = tmp_path / "out"
    for content in ("first", "second"):
        tmp = tmp_path / f".out.tmp-{os.getpid()}"
        tmp.mkdir()
        (tmp / "f.txt").write_text(content)
        replace_dir(tmp, out)
        assert (out / "f.txt").read_text() == content
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no tmp, no old copy
