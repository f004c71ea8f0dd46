"""Atomic training checkpoints: a run killed at any instant resumes from a whole checkpoint.

Layout of a run's output folder::

    OUT/checkpoints/
        step-00000500/          exported model (model.safetensors, config.json), train_state.pt,
                                COMPLETE (JSON manifest: each file's name, size and sha256)
        step-00001000/
        latest                  one line: the name of the committed checkpoint ("step-00001000")

A save survives SIGKILL or power loss at any instant because every visible change is one atomic
rename:

1. everything is written into ``step-XXXXXXXX.tmp-<pid>/`` and each file fsync'ed;
2. ``COMPLETE`` is written last (and fsync'ed with the folder), so a folder without it is partial;
3. the folder is renamed to ``step-XXXXXXXX`` and ``checkpoints/`` fsync'ed;
4. ``latest`` is replaced atomically (temp file, fsync, ``os.replace``, fsync): this is the commit;
5. only then are older checkpoints pruned (``keep_last``).

Saving a step that already exists (e.g. a SIGTERM save right after a periodic one) first renames
the old folder to ``step-XXXXXXXX.replaced-<pid>``; if the process dies before the new folder takes
its name, :func:`latest_checkpoint` finds the old version there, so there is no unsafe window.

:func:`latest_checkpoint` follows ``latest`` if its target verifies, else falls back to the newest
folder that verifies; ``*.tmp-*`` leftovers are never read and are removed by the next save.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from jestkit.errors import JestkitError, check
from jestkit.faults import fault_point
from jestkit.fsutil import atomic_write, fsync_dir

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
MANIFEST_FILE = "COMPLETE"
TRAIN_STATE_FILE = "train_state.pt"
MANIFEST_FORMAT = "jestkit-checkpoint/1"

_STEP_RE = re.compile(r"^step-(\d{8,})$")
_REPLACED_RE = re.compile(r"^(step-\d{8,})\.replaced-(\d+)$")
_TMP_RE = re.compile(r"\.tmp-(\d+)")


def checkpoint_name(step: int) -> str:
    """``step-00000500``: zero-padded so names sort like steps."""
    return f"step-{int(step):08d}"


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step encoded in a checkpoint folder's name, or None if it is not one."""
    name = Path(path).name
    m = _REPLACED_RE.match(name)
    m = _STEP_RE.match(m.group(1) if m else name)
    return int(m.group(1)) if m else None


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint folders under ``OUT/checkpoints`` sorted by step (not verified; no temp dirs)."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p))


# ----------------------------------------------------------------------------- verification


def _sha256(path: Path, fsync: bool = False) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
        if fsync:
            os.fsync(f.fileno())
    return h.hexdigest()


def verify_checkpoint(path: str | os.PathLike, full: bool = False) -> str | None:
    """Why ``path`` is not a whole checkpoint, or None if it is.

    Checks that ``COMPLETE`` exists and parses, that its step matches the folder name, and that
    every listed file exists with the listed size; ``full=True`` also re-hashes every file (sha256)
    to catch bit rot, at the cost of reading the whole checkpoint.
    """
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{manifest_path} is missing (the write did not finish)"
    except (OSError, ValueError) as e:
        return f"{manifest_path} is unreadable: {e}"
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return f"{manifest_path} is not a {MANIFEST_FORMAT} manifest"
    files = manifest.get("files")
    if not isinstance(files, dict) or TRAIN_STATE_FILE not in files:
        return f"{manifest_path} does not list {TRAIN_STATE_FILE}"
    step = checkpoint_step(path)
    if step is not None and manifest.get("step") != step:
        return f"{manifest_path} says step {manifest.get('step')!r} but the folder is step {step}"
    for name, entry in files.items():
        f = path / name
        try:
            size = f.stat().st_size
        except OSError:
            return f"{f} is missing"
        if size != entry.get("size"):
            return f"{f} has {size} bytes, the manifest says {entry.get('size')}"
        if full and _sha256(f) != entry.get("sha256"):
            return f"{f} does not match its sha256 in the manifest"
    return None


def _read_pointer(root: Path) -> str | None:
    try:
        name = (root / LATEST_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if _STEP_RE.match(name) else None


def latest_checkpoint(out_dir: str | os.PathLike, verify_hashes: bool = False) -> Path | None:
    """The committed checkpoint of a run (``OUT/checkpoints/latest``), or None if there is none.

    Never returns a partial or corrupt checkpoint: if ``latest`` is missing or its target does not
    verify, falls back (with a warning) to the newest checkpoint that does.
    """
    root = Path(out_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    name = _read_pointer(root)
    if name is not None:
        # The committed folder, or its previous version if a re-save of that step was cut short.
        for path in [root / name, *_replaced(root, name)]:
            if verify_checkpoint(path, full=verify_hashes) is None:
                return path
        warnings.warn(
            f"{root / LATEST_FILE} -> {name} is not usable "
            f"({verify_checkpoint(root / name, full=verify_hashes)}); "
            "falling back to the newest checkpoint that verifies",
            stacklevel=2,
        )
    candidates = list_checkpoints(out_dir) + [
        p for p in root.iterdir() if _REPLACED_RE.match(p.name) and p.is_dir()
    ]
    # Newest step first; of one step, the folder itself before an old version of it.
    candidates.sort(key=lambda p: (checkpoint_step(p), _REPLACED_RE.match(p.name) is None))
    for path in reversed(candidates):
        if verify_checkpoint(path, full=verify_hashes) is None:
            return path
    return None


def _replaced(root: Path, name: str) -> list[Path]:
    """Previous versions of checkpoint ``name`` whose re-save did not finish."""
    return sorted(p for p in root.glob(f"{name}.replaced-*") if _REPLACED_RE.match(p.name))


# ----------------------------------------------------------------------------- saving


def _remove(path: Path) -> None:
    """Best-effort removal of a file or folder (cleanup must not mask the original error)."""
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours, left by an earlier failed save in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _clean_stale(root: Path) -> None:
    """Remove ``*.tmp-<pid>*`` leftovers of saves that died (not those of a live process)."""
    for p in root.iterdir():
        m = _TMP_RE.search(p.name)
        if m and not _pid_alive(int(m.group(1))):
            _remove(p)


def _write_manifest(directory: Path, step: int) -> None:
    files = {}
    for f in sorted(directory.rglob("*")):
        if f.is_file():
            name = f.relative_to(directory).as_posix()
            files[name] = {"size": f.stat().st_size, "sha256": _sha256(f, fsync=True)}
    manifest = {"format": MANIFEST_FORMAT, "step": step, "files": files}
    with open(directory / MANIFEST_FILE, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def _write_pointer(root: Path, name: str) -> None:
    atomic_write(root / LATEST_FILE, name + "\n")


def _write_model_files(directory: Path, model: torch.nn.Module, tokenizer: Any) -> None:
    from jestkit.models import write_model_files  # lazy: models import nothing from here

    write_model_files(directory, model, tokenizer)


def _load_pretrained(path: Path, device: torch.device | str) -> tuple[torch.nn.Module, Any]:
    from jestkit.models import load_pretrained

    return load_pretrained(path, device=device)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DistributedDataParallel / torch.compile wrappers."""
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return model


def _prune(root: Path, keep_last: int, protect: set[str]) -> None:
    """Delete all but the newest ``keep_last`` verified checkpoints (never one in ``protect``)."""
    checkpoints = list_checkpoints(root.parent)
    verified = [p for p in checkpoints if verify_checkpoint(p) is None]
    if not verified:
        return
    keep = {p.name for p in verified[-keep_last:]} | protect
    newest = checkpoint_step(verified[-1])
    for p in checkpoints:
        if p.name in keep or checkpoint_step(p) >= newest:
            continue
        trash = root / f"{p.name}.tmp-{os.getpid()}-pruned"
        try:
            os.rename(p, trash)  # one atomic step out of sight, then the slow delete
        except OSError as e:
            warnings.warn(f"could not prune old checkpoint {p}: {e}", stacklevel=3)
            continue
        _remove(trash)


def _space_hint(root: Path) -> str:
    try:
        free = shutil.disk_usage(root if root.exists() else root.parent).free
    except OSError:
        return ""
    return f" ({free / 2**20:.1f} MiB free there; is the disk full or read-only?)"


def save_checkpoint(
    out_dir: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    tokenizer: Any,
    train_state: Mapping[str, Any],
    keep_last: int | None = 3,
) -> Path:
    """Write ``OUT/checkpoints/step-XXXXXXXX/`` atomically, commit it as ``latest``, prune old ones.

    ``train_state`` is whatever the loop needs to resume (optimizer, scheduler, loader cursor, FLOP
    ledger, step, config); it is saved with ``torch.save``. ``keep_last=None`` keeps everything.
    Raises :class:`JestkitError` (naming the path) if anything cannot be written; the previous
    checkpoint and the ``latest`` pointer are then left as they were.
    """
    check(
        isinstance(step, int) and not isinstance(step, bool) and step >= 0,
        f"step must be an int >= 0, got {step!r}",
    )
    check(
        keep_last is None or (isinstance(keep_last, int) and keep_last >= 1),
        f"keep_last must be None or an int >= 1, got {keep_last!r}",
    )
    check(
        isinstance(train_state, Mapping),
        f"train_state must be a dict, got {type(train_state).__name__}",
    )
    root = Path(out_dir) / CHECKPOINTS_DIR
    final = root / checkpoint_name(step)
    tmp = root / f"{final.name}.tmp-{os.getpid()}"
    old = root / f"{final.name}.replaced-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        _clean_stale(root)
        tmp.mkdir()
        _write_model_files(tmp, _unwrap(model), tokenizer)
        fault_point("checkpoint.model", final.name)  # crash tests (jestkit.faults); else no-op
        torch.save(dict(train_state), tmp / TRAIN_STATE_FILE)
        fault_point("checkpoint.state", final.name)
        _write_manifest(tmp, step)  # hashes + fsyncs every file, then writes COMPLETE last
        fsync_dir(tmp)
        fault_point("checkpoint.manifest", final.name)
        if final.exists():  # the same step saved again: keep the old version findable meanwhile
            if old.exists():
                shutil.rmtree(old)
            os.rename(final, old)
        os.rename(tmp, final)
        fsync_dir(root)
        fault_point("checkpoint.renamed", final.name)
    except (OSError, RuntimeError, SafetensorError) as e:
        # RuntimeError / SafetensorError: how torch.save and safetensors report a failed write.
        hint = _space_hint(root)  # measured before the partial files are removed
        _remove(tmp)
        raise JestkitError(f"cannot write checkpoint {final}: {e}{hint}") from e
    except BaseException:
        _remove(tmp)
        raise
    try:
        _write_pointer(root, final.name)
    except OSError as e:
        raise JestkitError(
            f"wrote {final} but cannot update {root / LATEST_FILE}: {e} "
            "(latest still points to the previous checkpoint)"
        ) from e
    fault_point("checkpoint.committed", final.name)
    for p in root.iterdir():  # old versions of re-saved steps are superseded by the commit
        m = _REPLACED_RE.match(p.name)
        if m and not _pid_alive(int(m.group(2))):
            _remove(p)
    if keep_last is not None:
        _prune(root, keep_last, protect={final.name})
    return final


# ----------------------------------------------------------------------------- loading


def load_train_state(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, Any]:
    """``train_state.pt`` of a checkpoint, tensors mapped to ``device``.

    Loaded with ``weights_only=True`` when its contents allow it (tensors, numbers, strings,
    containers); otherwise (e.g. numpy arrays in a loader cursor) it falls back to a full unpickle,
    which is safe only because the file comes from a checkpoint this library wrote and verified.
    """
    f = Path(path) / TRAIN_STATE_FILE
    try:
        try:
            state = torch.load(f, map_location=device, weights_only=True)
        except pickle.UnpicklingError:
            state = torch.load(f, map_location=device, weights_only=False)
    except FileNotFoundError as e:
        raise JestkitError(f"checkpoint {path} has no {TRAIN_STATE_FILE}") from e
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise JestkitError(f"cannot read {f}: {e}") from e
    check(isinstance(state, dict), f"{f} holds a {type(state).__name__}, expected a dict")
    return state


def _config_dict(config: Any) -> dict[str, Any]:
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    return dict(config)


def resolve_resume(out_dir: str | os.PathLike, resume: str | os.PathLike | None) -> Path | None:
    """What ``--resume`` means: None/"" -> start fresh; "latest" -> the committed checkpoint of
    ``out_dir`` (None if the run has none yet, so a run killed before its first checkpoint simply
    restarts); a path -> that checkpoint, which must verify."""
    if resume is None or str(resume) == "":
        return None
    if str(resume) == "latest":
        return latest_checkpoint(out_dir)
    path = Path(resume)
    if not path.is_dir():
        raise JestkitError(f"--resume {resume}: no such checkpoint folder")
    reason = verify_checkpoint(path)
    if reason is not None:
        raise JestkitError(f"--resume {resume}: not a complete checkpoint ({reason})")
    return path


def load_checkpoint(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    verify_hashes: bool = False,
    model_config: Any = None,
) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """``(model, tokenizer, train_state)`` from a checkpoint folder, on ``device``.

    The model is rebuilt from the checkpoint's own ``config.json`` by
    :func:`jestkit.models.load_pretrained`. Pass ``model_config`` (a ModelConfig or dict) to
    require that it matches: a resume into a run of another model config fails here, naming the
    fields that differ, instead of later with a shape error.
    """
    path = Path(path)
    check(path.is_dir(), f"checkpoint {path} does not exist or is not a folder")
    reason = verify_checkpoint(path, full=verify_hashes)
    if reason is not None:
        raise JestkitError(f"checkpoint {path} is not usable: {reason}")
    model, tokenizer = _load_pretrained(path, device)
    if model_config is not None:
        have, want = _config_dict(model.config), _config_dict(model_config)
        diff = sorted(k for k in have.keys() | want.keys() if have.get(k) != want.get(k))
        if diff:
            shown = ", ".join(f"{k}={have.get(k)!r} (expected {want.get(k)!r})" for k in diff[:6])
            raise JestkitError(f"checkpoint {path} was written for another model config: {shown}")
    return model, tokenizer, load_train_state(path, device)
