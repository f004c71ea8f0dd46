"""The report's figures (matplotlib's object API: no pyplot state, no backend switching)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jestkit.report.stats import batch_sweep, eval_points
from jestkit.report.suite import Run, _finite


@dataclass
class Plot:
    file: str
    title: str
    caption: str


def _figure(ncols: int = 1) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5 * ncols if ncols > 1 else 8.5, 5.0), dpi=110, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, list(axes)


def _colors(methods: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A stable colour per method, distinct within its family (baselines are drawn black)."""
    from matplotlib import colormaps

    out: dict[str, Any] = {}
    for fam in sorted({m["family"] for m in methods.values()}):
        names = sorted(n for n, m in methods.items() if m["family"] == fam and m["baseline"] != n)
        cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
        out |= {n: cmap(i % cmap.N) for i, n in enumerate(names)}
    return out


def _aligned(
    runs: Sequence[Run], series: Callable[[Run], list[dict[str, float]]], x: str, y: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """x (mean over seeds) and y [seeds, points] at the steps every seed logged."""
    per_run = [{int(p["step"]): p for p in series(r)} for r in runs]
    per_run = [d for d in per_run if d]
    if not per_run:
        return None
    common = sorted(set.intersection(*(set(d) for d in per_run)))
    if not common:
        return None
    xs = np.array([[d[s][x] for s in common] for d in per_run], dtype=float).mean(0)
    ys = np.array([[d[s][y] for s in common] for d in per_run], dtype=float)
    return xs, ys


def _band(
    ax: Any, xs: np.ndarray, ys: np.ndarray, label: str | None, color: Any, **kw: Any
) -> None:
    mean = np.nanmean(ys, axis=0)
    text = "_nolegend_" if label is None else f"{label} (n={len(ys)})"
    ax.plot(xs, mean, label=text, color=color, **kw)
    if len(ys) > 1:
        ax.fill_between(xs, np.nanmin(ys, 0), np.nanmax(ys, 0), color=color, alpha=0.15, lw=0)


def _smooth(v: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(v) < window:
        return v
    kernel = np.ones(window) / window
    pad = np.concatenate([np.full(window - 1, v[0]), v])
    return np.convolve(pad, kernel, mode="valid")


def _step_series(keys: Sequence[str]) -> Callable[[Run], list[dict[str, float]]]:
    def series(run: Run) -> list[dict[str, float]]:
        out = []
        for r in run.step_lines():
            point = {"step": r["step"], **{k: _finite(r.get(k)) for k in keys}}
            if not all(math.isnan(point[k]) for k in keys):
                out.append(point)
        return out

    return series


class Plotter:
    """Writes the report's figures into ``plots/``; each method returns the Plot it wrote, or None."""

    def __init__(
        self, out_dir: Path, methods: dict[str, dict[str, Any]], metric: str, runs: Sequence[Run]
    ):
        self.out_dir = out_dir
        self.methods = methods
        self.metric = metric
        self.short = metric.split("/")[-1]
        self.colors = _colors(methods)
        self.runs = runs

    def _save(self, fig: Any, file: str, title: str, caption: str) -> Plot:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.out_dir / file, format="png")
        return Plot(f"plots/{file}", title, caption)

    def _main(self, family: str, *, scoring_only: bool = False) -> list[str]:
        names = [
            n
            for n, m in self.methods.items()
            if m["family"] == family and m["kind"] == "learner" and not m["tags"].get("sweep")
        ]
        if scoring_only:
            names = [n for n in names if self.methods[n]["selection"] not in (None, "uniform")]
        return sorted(names)

    def _style(self, name: str) -> dict[str, Any]:
        m = self.methods[name]
        if m["baseline"] == name:
            return {"color": "black", "lw": 2.2}
        return {"color": self.colors[name], "lw": 1.6}

    def curves(self, family: str, x: str) -> Plot | None:
        names = self._main(family)
        xlabel = {
            "step": "learner steps (optimizer updates)",
            "examples": "training examples seen (selected, not scored)",
        }[x]
        fig, (ax,) = _figure()
        drawn = 0
        for n in names:
            data = _aligned(self.methods[n]["_runs"], self._evals, x, "value")
            if data is None:
                continue
            _band(ax, *data, n, **self._style(n))
            drawn += 1
        if not drawn:
            return None
        self._target_lines(ax, names, with_refs=(x == "step"))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{self.short} (held-out eval)")
        what = "learner steps" if x == "step" else "examples seen"
        ax.set_title(f"{self.short} vs {what} ({family} family; mean, min-max band over seeds)")
        ax.legend(fontsize=7, loc="lower right")
        file = f"{self.short}_vs_{'steps' if x == 'step' else 'examples'}_{family}.png"
        cap = (
            "a curve left of the black baseline reaching the dotted target line sooner is the "
            "speed-up; the band is the min-max over seeds"
        )
        if x == "examples":
            cap = (
                "the same curves per training example: selection does not change the examples "
                "trained on per step, so this mirrors the steps plot"
            )
        return self._save(fig, file, f"{self.short} vs {what} ({family})", cap)

    def _target_lines(self, ax: Any, names: Sequence[str], with_refs: bool) -> None:
        bases = sorted({self.methods[n]["baseline"] for n in names} - {None})
        for b in bases:
            if b in self.methods:
                ax.axhline(
                    self.methods[b]["final_metric"],
                    color="black",
                    ls=":",
                    lw=1,
                    label=f"target: {b} final",
                )
        if with_refs:
            refs = sorted({self.methods[n].get("reference") for n in names} - {None})
            styles = ["-.", (0, (1, 1)), (0, (5, 1, 1, 1, 1, 1)), (0, (3, 3))]
            for i, r in enumerate(r for r in refs if r in self.methods):
                ax.axhline(
                    self.methods[r]["final_metric"],
                    color="dimgrey",
                    ls=styles[i % len(styles)],
                    lw=1.2,
                    label=f"{r} (reference) final",
                )

    def _evals(self, run: Run) -> list[dict[str, float]]:
        return eval_points(run.records, self.metric)

    def curves_flops(self, family: str) -> Plot | None:
        names = self._main(family)
        fig, axes = _figure(2)
        drawn = 0
        for n in names:
            m = self.methods[n]
            data = _aligned(m["_runs"], self._evals, "flops", "value")
            if data is None:
                continue
            xs, ys = data
            keep = xs > 0
            if not keep.any():
                continue
            _band(axes[0], xs[keep], ys[:, keep], n, **self._style(n))
            ref = m["reference_training_flops"] if m.get("uses_reference") else 0.0
            if ref is not None:
                _band(axes[1], xs[keep] + ref, ys[:, keep], n, **self._style(n))
            drawn += 1
        if not drawn:
            return None
        for ax, title in zip(
            axes,
            (
                "learner training + scoring + reference inference",
                "... + the reference model's training",
            ),
            strict=True,
        ):
            self._target_lines(ax, names, with_refs=False)
            ax.set_xscale("log")
            ax.set_xlabel("total FLOPs (log scale)")
            ax.set_ylabel(f"{self.short} (held-out eval)")
            ax.set_title(title, fontsize=10)
            ax.legend(fontsize=7, loc="lower right")
        fig.suptitle(f"{self.short} vs total compute ({family} family)")
        return self._save(
            fig,
            f"{self.short}_vs_flops_{family}.png",
            f"{self.short} vs total FLOPs ({family})",
            "compare where each curve crosses the target line: left of the baseline means the "
            "selection paid for its scoring; the right panel adds the reference's training cost",
        )

    def noisy_fraction(self, family: str) -> Plot | None:
        names = self._main(family)
        fig, (ax,) = _figure()
        drawn, pool = 0, []
        series = _step_series(["noisy_selected_frac", "noisy_pool_frac"])
        for n in names:
            data = _aligned(self.methods[n]["_runs"], series, "step", "noisy_selected_frac")
            if data is None:
                continue
            xs, ys = data
            w = max(1, len(xs) // 50)
            ys = np.stack([_smooth(y, w) for y in ys])
            _band(ax, xs, ys, n, **self._style(n))
            p = self.methods[n]["noisy_pool_frac"]
            if p is not None:
                pool.append(p)
            drawn += 1
        if not drawn or not any(pool):
            return None  # no noise labels in the data (a user's own pool): nothing to show
        if pool:
            ax.axhline(
                float(np.mean(pool)), color="grey", ls="--", lw=1, label="pool's noisy fraction"
            )
        ax.set_xlabel("learner steps")
        ax.set_ylabel("fraction of the selected batch marked noisy")
        ax.set_ylim(bottom=0)
        ax.set_title(f"Noisy examples selected over training ({family} family; moving average)")
        ax.legend(fontsize=7)
        return self._save(
            fig,
            f"noisy_selected_{family}.png",
            f"noisy examples selected ({family})",
            "a scoring selector should sit well below the dashed pool fraction (uniform sits on "
            "it); watch whether it drifts up as the learner catches up with the reference",
        )

    def joint_terms(self, family: str) -> Plot | None:
        names = [
            n
            for n in self._main(family, scoring_only=True)
            if any("sel/joint_term_spread" in r for r in self.methods[n]["_runs"][0].step_lines())
        ]
        if not names:
            return None
        fig, axes = _figure(2)
        keys = (
            ("sel/joint_term_spread", "sel/example_score_spread"),
            ("sel/learner_neg_loss_selected", "sel/reference_neg_loss_selected"),
        )
        for ax, (k1, k2) in zip(axes, keys, strict=True):
            series = _step_series([k1, k2])
            for n in names:
                color = self._style(n)["color"]
                for key, ls in ((k1, "-"), (k2, "--")):
                    data = _aligned(self.methods[n]["_runs"], series, "step", key)
                    if data is None or np.isnan(data[1]).all():
                        continue
                    xs, ys = data
                    w = max(1, len(xs) // 50)
                    ys = np.stack([_smooth(y, w) for y in ys])
                    # One legend entry per method (its colour); the line style is in the title.
                    _band(ax, xs, ys, n if ls == "-" else None, color, ls=ls, lw=1.4)
            ax.set_xlabel("learner steps")
            ax.legend(fontsize=7)
        axes[0].set_ylabel("std over the selected batch (score units)")
        axes[0].set_title("joint terms (solid) vs per-example scores (dashed)", fontsize=10)
        axes[1].set_ylabel("mean negative-pair sigmoid loss in the selected batch")
        axes[1].set_yscale("log")
        axes[1].set_title("negative-pair losses: learner (solid), reference (dashed)", fontsize=10)
        fig.suptitle(f"Did the joint terms have anything to work with? ({family} family)")
        return self._save(
            fig,
            f"joint_terms_{family}.png",
            f"joint-term diagnostics ({family})",
            "joint selection can only differ from independent where the solid joint-term spread "
            "is comparable to the dashed per-example spread; the right panel shows why (tiny "
            "negative-pair losses make tiny joint terms)",
        )

    def batch_sweep(self, family: str) -> Plot | None:
        points = batch_sweep(self.methods, family)
        if not points:
            return None
        fig, axes = _figure(2)
        bs = np.array([p["x"] for p in points], dtype=float)
        for key, label, color in (("joint", "jest", "C0"), ("independent", "independent", "C1")):
            axes[0].errorbar(
                bs,
                [p[key] for p in points],
                yerr=[p[f"{key}_std"] for p in points],
                marker="o",
                capsize=3,
                color=color,
                label=f"{label} f=0.8",
            )
        axes[1].errorbar(
            bs,
            [p["gap"] for p in points],
            yerr=[p["gap_std"] for p in points],
            marker="o",
            capsize=3,
            color="C2",
            label="jest - independent (± std over seeds)",
        )
        axes[1].axhline(0, color="black", lw=0.8)
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_xlabel("training batch size b (log2)")
            ax.legend(fontsize=8)
        axes[0].set_ylabel(f"final {self.short}")
        axes[0].set_title("final metric (mean ± std over seeds)", fontsize=10)
        axes[1].set_ylabel(f"final {self.short} gap")
        axes[1].set_title("joint - independent gap", fontsize=10)
        fig.suptitle(f"Batch-size sweep ({family} family)")
        return self._save(
            fig,
            f"batch_sweep_{family}.png",
            f"batch-size sweep ({family})",
            "the joint terms are sums over the selected batch, so the gap should grow with b; "
            "an error bar crossing zero means no measurable difference at that b",
        )

    def sweep_joint_terms(self, family: str) -> Plot | None:
        """The joint terms against the per-example scores as b grows, and over training."""
        points = [p for p in batch_sweep(self.methods, family) if p.get("jest_diagnostics")]
        if not points:
            return None
        fig, axes = _figure(2)
        bs = np.array([p["x"] for p in points], dtype=float)
        for key, label, color, ls in (
            ("sel/pool_joint_term_spread", "joint terms, pool candidates", "C0", "-"),
            ("sel/pool_example_score_spread", "per-example scores, pool", "C1", "-"),
            ("sel/joint_term_spread", "joint terms, within the batch", "C0", "--"),
            ("sel/example_score_spread", "per-example scores, within the batch", "C1", "--"),
        ):
            ys = [p["jest_diagnostics"].get(key, {}).get("mean", math.nan) for p in points]
            if not np.isnan(ys).all():
                axes[0].plot(bs, ys, marker="o", color=color, ls=ls, label=label)
        axes[0].set_xscale("log", base=2)
        axes[0].set_yscale("log")
        axes[0].set_xlabel("training batch size b (log2)")
        axes[0].set_ylabel("std (score units; mean over steps and seeds)")
        axes[0].set_title("spread of joint terms vs per-example scores (jest runs)", fontsize=10)
        axes[0].legend(fontsize=7)
        series = _step_series(["sel/pool_joint_term_spread", "sel/pool_example_score_spread"])
        cmap = self.colors
        drawn = 0
        for i, p in enumerate(points):
            name = p["methods"][0]
            runs = self.methods[name]["_runs"]
            rows = [series(r) for r in runs]
            if not any(rows):
                continue
            ratio = _aligned(
                runs,
                lambda r: [
                    {"step": q["step"], "ratio": q["sel/pool_joint_term_spread"]
                     / q["sel/pool_example_score_spread"]}
                    for q in series(r)
                    if q["sel/pool_example_score_spread"] > 0
                ],
                "step",
                "ratio",
            )  # fmt: skip
            if ratio is None:
                continue
            xs, ys = ratio
            w = max(1, len(xs) // 30)
            ys = np.stack([_smooth(y, w) for y in ys])
            _band(axes[1], xs, ys, f"b={p['x']}", cmap.get(name, f"C{i}"))
            drawn += 1
        axes[1].axhline(1.0, color="black", lw=0.8, ls=":")
        axes[1].set_yscale("log")
        axes[1].set_xlabel("learner steps")
        axes[1].set_ylabel("joint-term spread / per-example spread (pool)")
        axes[1].set_title("over training (moving average)", fontsize=10)
        if drawn:
            axes[1].legend(fontsize=7)
        fig.suptitle(f"Joint terms vs batch size ({family} family)")
        return self._save(
            fig,
            f"joint_terms_vs_b_{family}.png",
            f"joint terms vs batch size ({family})",
            "the joint terms are sums over the selected batch, so their spread grows with b while "
            "the per-example spread does not; above the dotted line (ratio 1) they dominate what "
            "the sampler picks",
        )

    def bias_init(self, family: str) -> Plot | None:
        ablated = sorted(
            n
            for n, m in self.methods.items()
            if m["tags"].get("sweep") == "bias_init" and m["family"] == family
        )
        if not ablated:
            return None
        fig, (ax,) = _figure()
        main = self._main(family)
        for n in ablated:
            m = self.methods[n]
            color = self._style(n)["color"]  # the ablated baseline is drawn black too
            data = _aligned(m["_runs"], self._evals, "step", "value")
            if data is not None:
                bias = m["tags"].get("bias_init", m["tags"].get("bias"))
                _band(ax, *data, f"{n} (bias init {bias})", color)
            twin = next(
                (
                    t
                    for t in main
                    if all(
                        self.methods[t].get(k) == m.get(k)
                        for k in ("selection", "criterion", "filter_ratio", "batch_size")
                    )
                ),
                None,
            )
            if twin is not None:
                data = _aligned(self.methods[twin]["_runs"], self._evals, "step", "value")
                if data is not None:
                    _band(ax, *data, f"{twin} (default bias init)", color, ls="--")
        ax.set_xlabel("learner steps")
        ax.set_ylabel(f"{self.short} (held-out eval)")
        ax.set_title(f"Bias-initialisation ablation ({family} family)")
        ax.legend(fontsize=7, loc="lower right")
        return self._save(
            fig,
            f"bias_init_{family}.png",
            f"bias-init ablation ({family})",
            "solid: the ablated bias init, dashed: the default (-10) with the same selector; a "
            "larger effect on jest than on uniform means the bias mattered to the joint terms",
        )

    def overhead(self, family: str) -> Plot | None:
        names = [
            n
            for n in self._main(family)
            if self.methods[n]["wall_ratio_vs_baseline"] is not None
            and self.methods[n]["flop_ratio_vs_baseline"] is not None
        ]
        if not names:
            return None
        fig, (ax,) = _figure()
        xs = [self.methods[n]["flop_ratio_vs_baseline"] for n in names]
        ys = [self.methods[n]["wall_ratio_vs_baseline"] for n in names]
        for n, x, y in zip(names, xs, ys, strict=True):
            ax.scatter([x], [y], color=self._style(n)["color"], s=40, zorder=3)
            ax.annotate(n, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
        hi = max(max(xs), max(ys)) * 1.15
        grid = np.linspace(0, hi, 50)
        ax.plot(grid, grid, color="grey", lw=1, label="wall ratio = FLOP ratio")
        ax.fill_between(grid, grid * 0.75, grid * 1.25, color="grey", alpha=0.12, label="± 25%")
        ax.set_xlim(0, hi)
        ax.set_ylim(0, hi)
        ax.set_xlabel("FLOPs per step / baseline's (analytic FLOP model)")
        ax.set_ylabel("median wall time per step / baseline's (measured)")
        ax.set_title(f"Per-step cost: measured vs FLOP model ({family} family)")
        ax.legend(fontsize=8, loc="upper left")
        return self._save(
            fig,
            f"step_cost_{family}.png",
            f"per-step wall time vs FLOPs ({family})",
            "points above the diagonal cost more wall time than the FLOP model predicts "
            "(selection, lookups and Python overhead are not FLOPs); the runs of a suite share "
            "one machine but not one moment, so treat this as indicative",
        )

    def all(self) -> list[Plot]:
        families = sorted({m["family"] for m in self.methods.values() if m["kind"] == "learner"})
        plots: list[Plot] = []
        for fam in families:
            for make in (
                lambda f: self.curves(f, "step"),
                lambda f: self.curves(f, "examples"),
                self.curves_flops,
                self.noisy_fraction,
                self.joint_terms,
                self.batch_sweep,
                self.sweep_joint_terms,
                self.bias_init,
                self.overhead,
            ):
                plot = make(fam)
                if plot is not None:
                    plots.append(plot)
        return plots
