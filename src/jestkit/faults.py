"""Fault injection for crash tests: kill the process at a named point of a write protocol.

    JESTKIT_FAULT=checkpoint.manifest@2 jestkit train --config quick --out runs/q

SIGKILLs the process the 2nd time it reaches the point ``checkpoint.manifest`` (after the
checkpoint's files and their manifest are written, before the folder is renamed into place).
SIGKILL runs no handler and flushes nothing, which is what an OOM kill or a lost machine leaves
behind; a randomly timed kill rarely lands inside a write that lasts milliseconds, so the crash
tests (``tests/test_kill_resume.py``, ``bench/kill_resume.py``) aim at these points instead.

With ``JESTKIT_FAULT_LOG=FILE`` a line ``NAME@N DETAIL`` is appended (and fsync'ed) to FILE just
before the kill, so a test can say where each kill landed. Unset, :func:`fault_point` costs one
environment lookup.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from jestkit.errors import JestkitError

ENV = "JESTKIT_FAULT"
LOG_ENV = "JESTKIT_FAULT_LOG"

# Every point the library defines, in the order a training step meets them.
POINTS = {
    "metrics.write": "half of a metrics.jsonl line written and flushed (a torn line)",
    "eval.start": "an evaluation begins",
    "eval.retrieval": "retrieval metrics computed, zero-shot not yet",
    "checkpoint.model": "a checkpoint's temp folder holds the model files only",
    "checkpoint.state": "train_state.pt written, no manifest yet",
    "checkpoint.manifest": "COMPLETE written, the folder not yet renamed into place",
    "checkpoint.renamed": "the folder renamed into place, `latest` not yet updated",
    "checkpoint.committed": "`latest` updated, old checkpoints not yet pruned",
}

_hits: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return None
    name, _, nth = spec.partition("@")
    try:
        n = int(nth) if nth else 1
    except ValueError:
        n = 0
    if name not in POINTS or n < 1:
        raise JestkitError(
            f"{ENV}={spec!r}: expected NAME[@N] with N >= 1 and NAME one of {sorted(POINTS)}"
        )
    return name, n


def fault_point(name: str, detail: str = "", before: Callable[[], None] | None = None) -> None:
    """SIGKILL this process here if ``$JESTKIT_FAULT`` names this point and hit (else nothing).

    ``before`` runs just before the kill (e.g. to leave half a line in a file).
    """
    target = _target()
    if target is None or target[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != target[1]:
        return
    if before is not None:
        before()
    log = os.environ.get(LOG_ENV)
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{name}@{target[1]} {detail}".rstrip() + "\n")
            f.flush()
            os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)
