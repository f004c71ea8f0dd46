"""The README's "Use it on your data" walkthrough runs as written and ends with a report.

The commands are taken from the section's ```bash block(s) themselves, so the README and this test
cannot drift apart: edit the README and this test runs the new text.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from jestkit.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Use it on your data"


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", body, flags=re.S)
    assert blocks, f"no ```bash block in the README section {SECTION!r}"
    return "\n".join(blocks)


def test_the_walkthrough_runs_as_written_and_ends_with_a_report(tmp_path):
    script = walkthrough()
    venv = ROOT / ".venv"
    if (venv / "bin" / "activate").is_file():
        (tmp_path / ".venv").symlink_to(venv)
    else:  # tests run from another environment: an `activate` that puts it on PATH
        (tmp_path / ".venv" / "bin").mkdir(parents=True)
        bindir = shlex.quote(str(Path(sys.executable).parent))
        (tmp_path / ".venv" / "bin" / "activate").write_text(f'export PATH={bindir}:"$PATH"\n')
    env = {**os.environ, "JESTKIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, (
        f"the walkthrough failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )

    # The folder the README's pipeline command writes, and the runs it asked for.
    command = next(line for line in script.splitlines() if "jestkit pipeline --pool" in line)
    command = re.sub(r"\\\n\s*", " ", script[script.index(command) :]).splitlines()[0]
    args = shlex.split(command)
    out = tmp_path / args[args.index("--out") + 1]
    selector = args[args.index("--selector") + 1] if "--selector" in args else "jest"
    compare = args[args.index("--compare") + 1] if "--compare" in args else None
    runs = ["reference", selector, *([compare] if compare else [])]

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# jestkit pipeline report") and "# jestkit pipeline report" in proc.stdout
    for name in runs:
        final = read_metrics(out / "runs" / name / "metrics.jsonl")[-1]
        assert final.get("final"), f"run {name} did not finish"
        m = report["methods"][name]
        assert m["final_metric"] == final["eval/retrieval_r1"]
        for key in ("eval/i2t_r1", "eval/t2i_r1", "eval/zeroshot_top1"):
            assert m["final_eval"][key]["mean"] == final[key], (name, key)
        assert f"| {name}" in md
    # The last line of the pipeline sums up every run's metrics.
    summary = next(
        line for line in proc.stdout.splitlines() if line.startswith("pipeline: reference")
    )
    for name in runs:
        i2t = read_metrics(out / "runs" / name / "metrics.jsonl")[-1]["eval/i2t_r1"]
        assert f"{name}: R@1 i2t {i2t:.3f}" in summary
    assert report["plots"] and all((out / p["file"]).is_file() for p in report["plots"])
    assert not report["unfinished_runs"] and report["claims"] == []

    # Run the command again (as after a crash): every stage is found done, nothing is retrained.
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("metrics.jsonl")}
    again = subprocess.run(
        ["bash", "-c", f"set -euo pipefail\nsource .venv/bin/activate\n{command}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already there and valid: skipped") == 2 + len(runs)  # + data, cache
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
