"""metrics.jsonl (one JSON object per line, big_vision style), optional TensorBoard, a progress bar.

Each :meth:`MetricsWriter.write` appends one line and flushes it, so a killed run loses at most
the line being written. A line counts only if it parses: a torn last line is dropped on reopen and
ignored by :func:`read_metrics`. On resume from the checkpoint of step ``s``, pass
``truncate_after_step=s``: lines of steps the killed run logged after that checkpoint are dropped
(atomically), so the resumed run's file ends identical to an uninterrupted run's.

Non-finite floats (NaN, ±inf) are written as JSON ``null``: the file stays strict JSON that any
parser reads; a ``null`` loss means the value was not finite.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from jestkit.errors import JestkitError, check
from jestkit.faults import fault_point
from jestkit.fsutil import atomic_write

# ----------------------------------------------------------------------------- JSON records


def to_jsonable(value: Any, key: str = "record") -> Any:
    """A plain-JSON copy of ``value``: numpy/torch scalars -> numbers, arrays -> lists,
    non-finite floats -> None. Raises :class:`JestkitError` naming ``key`` for other types."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return to_jsonable(
            value.item() if value.numel() == 1 and value.dim() == 0 else value.tolist(), key
        )
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist(), key)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise JestkitError(f"metrics {key}: cannot log a {type(value).__name__} ({value!r:.80})")


def _encode(record: Mapping[str, Any]) -> bytes:
    check(
        isinstance(record, Mapping), f"metrics record must be a dict, got {type(record).__name__}"
    )
    step = record.get("step")
    check(
        isinstance(step, (int, np.integer)) and not isinstance(step, (bool, np.bool_)),
        f"metrics record needs an int 'step', got step={step!r}",
    )
    line = json.dumps(to_jsonable(record), separators=(",", ":"), allow_nan=False)
    return line.encode("utf-8") + b"\n"


def _parse_lines(path: Path, data: bytes) -> list[tuple[bytes, dict]]:
    """(line bytes with newline, record) for each record; an unparseable last line is dropped.

    Only the last line may be unparseable (a write cut short by a crash); a bad line elsewhere
    means the file was damaged by something else and is an error.
    """
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" if the file ends with a newline, else an unterminated last line
    out: list[tuple[bytes, dict]] = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise JestkitError(
                f"{path}:{i + 1}: not a JSON line ({e}); the file was damaged (not just a torn "
                "last line): repair or remove it"
            ) from e
        check(isinstance(rec, dict), f"{path}:{i + 1}: expected a JSON object, got {raw[:80]!r}")
        out.append((raw + b"\n", rec))
    if tail.strip():
        try:
            rec = json.loads(tail)
        except (ValueError, UnicodeDecodeError):
            rec = None
        if isinstance(rec, dict):
            out.append((tail + b"\n", rec))  # complete record, only its newline missing
    return out


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl, in order; a torn last line (killed mid-write) is ignored."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise JestkitError(f"metrics file {path} does not exist") from e
    except OSError as e:
        raise JestkitError(f"cannot read metrics file {path}: {e}") from e
    return [rec for _, rec in _parse_lines(path, data)]


def _scalars(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a (nested) record, keys joined with '/' (TensorBoard tags)."""
    out: dict[str, float] = {}
    for k, v in record.items():
        tag = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_scalars(v, tag + "/"))
        elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
            v, (bool, np.bool_)
        ):
            out[tag] = float(v)
        elif isinstance(v, torch.Tensor) and v.numel() == 1:
            out[tag] = float(v.item())
    out.pop("step", None)
    return out


class MetricsWriter:
    """Append-only metrics.jsonl writer (one flushed line per record), optionally mirrored to
    TensorBoard.

    Args:
        path: the JSONL file; its folder is created.
        tensorboard_dir: also log every numeric scalar (nested keys joined with '/') to a
            ``torch.utils.tensorboard.SummaryWriter`` there. Needs the ``tensorboard`` package.
        truncate_after_step: resume from a checkpoint of this step: first drop every existing line
            whose ``step`` is greater and any ``"final": true`` line (atomic rewrite), and
            TensorBoard events after it. ``-1`` empties the file: a fresh start in a folder where
            a run died before its first checkpoint.
        fsync_every: also ``os.fsync`` every k lines (0: flush only; the OS still has the data
            after a process kill, fsync guards against power loss).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        tensorboard_dir: str | os.PathLike | None = None,
        truncate_after_step: int | None = None,
        fsync_every: int = 0,
    ) -> None:
        check(
            isinstance(fsync_every, int) and fsync_every >= 0,
            f"fsync_every must be an int >= 0, got {fsync_every!r}",
        )
        check(
            truncate_after_step is None
            or (isinstance(truncate_after_step, int) and not isinstance(truncate_after_step, bool)),
            f"truncate_after_step must be None or an int, got {truncate_after_step!r}",
        )
        self.path = Path(path)
        self.fsync_every = fsync_every
        self._lines = 0
        self._tb = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._repair(truncate_after_step)
            self._file = open(self.path, "ab")  # noqa: SIM115 (closed in close())
        except OSError as e:
            raise JestkitError(f"cannot open metrics file {self.path} for writing: {e}") from e
        if tensorboard_dir is not None:
            self._tb = _summary_writer(tensorboard_dir, truncate_after_step)

    def _repair(self, truncate_after_step: int | None) -> None:
        """Drop a torn last line, and the lines after ``truncate_after_step``, atomically."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        records = _parse_lines(self.path, data)
        if truncate_after_step is not None:
            records = [(raw, r) for raw, r in records if not _after(r, truncate_after_step)]
        new = b"".join(raw for raw, _ in records)
        if new != data:
            atomic_write(self.path, new)

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` (a dict with an int ``step``) as one line and flush it."""
        line = _encode(record)
        try:
            fault_point("metrics.write", f"step {record['step']}", lambda: self._torn(line))
            self._file.write(line)
            self._file.flush()
            self._lines += 1
            if self.fsync_every and self._lines % self.fsync_every == 0:
                os.fsync(self._file.fileno())
        except OSError as e:
            raise JestkitError(f"cannot write to metrics file {self.path}: {e}") from e
        if self._tb is not None:
            step = int(record["step"])
            for tag, value in _scalars(record).items():
                self._tb.add_scalar(tag, value, step)

    def _torn(self, line: bytes) -> None:
        """Half a line on disk: what a crash in the middle of a write leaves (crash tests)."""
        self._file.write(line[: len(line) // 2])
        self._file.flush()

    def flush(self) -> None:
        """Flush and fsync the file (and TensorBoard), e.g. before a checkpoint."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:
            raise JestkitError(f"cannot write to metrics file {self.path}: {e}") from e
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _after(record: Mapping[str, Any], step: int) -> bool:
    """Dropped when resuming from step ``step``: later steps, and a final line (the resumed run
    writes its own, identical one: re-running a finished run must not duplicate it)."""
    s = record.get("step")
    return record.get("final") is True or (
        isinstance(s, int) and not isinstance(s, bool) and s > step
    )


def _summary_writer(log_dir: str | os.PathLike, truncate_after_step: int | None) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise JestkitError(
            f"tensorboard_dir={os.fspath(log_dir)!r} needs the tensorboard package "
            "(pip install 'jestkit[tensorboard]'): " + str(e)
        ) from e
    purge = None if truncate_after_step is None else truncate_after_step + 1
    return SummaryWriter(log_dir=os.fspath(log_dir), purge_step=purge)


# ----------------------------------------------------------------------------- progress bar


class ProgressBar:
    """A tqdm bar over training steps whose postfix shows the loss and the latest eval metric.

    The eval metric stays on the bar between evaluations. ``disable=True`` makes every call a no-op
    (non-interactive runs, ranks other than 0).
    """

    def __init__(
        self,
        total: int,
        initial: int = 0,
        desc: str = "train",
        metric: str = "retrieval_r1",
        disable: bool = False,
        file: TextIO | None = None,
    ) -> None:
        from jestkit.progress import progress_bar  # tqdm on a terminal, plain lines in a log

        self.metric = metric
        self.eval_value: float | None = None
        self._bar = progress_bar(
            total=total,
            initial=initial,
            desc=desc,
            unit="step",
            dynamic_ncols=True,
            disable=disable,
            file=file if file is not None else sys.stderr,
        )

    def update(
        self,
        step: int | None = None,
        loss: float | None = None,
        metrics: Mapping[str, Any] | None = None,
        **scalars: Any,
    ) -> None:
        """Move to ``step`` (or one step on) and refresh the postfix.

        The eval metric is taken from ``metrics`` or keyword scalars, under its name or any
        prefixed form (``retrieval_r1``, ``eval/retrieval_r1``); it stays shown until the next.
        """
        for key, value in {**(metrics or {}), **scalars}.items():
            if value is not None and (key == self.metric or key.endswith("/" + self.metric)):
                self.eval_value = float(value)
        postfix: dict[str, str] = {}
        if loss is not None:
            postfix["loss"] = f"{float(loss):.4f}"
        if self.eval_value is not None:
            postfix[self.metric] = f"{self.eval_value:.4f}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(1 if step is None else step - self._bar.n)

    @property
    def postfix(self) -> str:
        return self._bar.postfix or ""

    def write(self, message: str) -> None:
        """Print a line without breaking the bar."""
        self._bar.write(message)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def final_record(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The final line of a finished run's metrics.jsonl (None: not finished, or no run there)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = read_metrics(path)
    return rows[-1] if rows and rows[-1].get("final") else None
