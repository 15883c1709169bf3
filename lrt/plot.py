"""Plots of a run (or several, overlaid) from metrics.jsonl: loss terms, LR, grad norm, eval nDCG.

Why: a researcher wants the curves at a glance without a tracker. Training writes
`<run>/plots/*.png` at each evaluation and at the end; `lrt plot RUN [RUN ...] --out DIR` overlays
runs. matplotlib's object API with the Agg canvas only (no pyplot, no display, no global backend
switch), so it is safe inside a training process and on a headless node.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger("lrt")

KINDS = ("loss", "lr", "grad_norm", "eval")
YLABEL = {"loss": "loss (interval mean)", "lr": "learning rate", "grad_norm": "grad norm (pre-clip)", "eval": "nDCG@10"}
TITLE = {"loss": "training loss terms", "lr": "learning rate", "grad_norm": "gradient norm", "eval": "evaluation"}


class Run:
    """Training and evaluation records of one run dir, one record per step (the last wins on resume)."""

    def __init__(self, run_dir: str | Path, label: str | None = None) -> None:
        self.dir = Path(run_dir)
        self.label = label or self.dir.name
        f = self.dir / "metrics.jsonl"
        if not f.is_file():
            from lrt.errors import LrtError

            raise LrtError(f"{self.dir}: no metrics.jsonl (is it an lrt run directory?)")
        train: dict[int, dict[str, Any]] = {}
        ev: dict[int, dict[str, Any]] = {}
        for line in f.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            step = rec.get("step") if isinstance(rec, dict) else None
            if not isinstance(step, int) or isinstance(step, bool):
                continue
            if "loss" in rec:
                train[step] = rec
            elif any(k.startswith("eval/") for k in rec):
                ev[step] = rec
        self.train = [train[s] for s in sorted(train)]
        self.eval = [ev[s] for s in sorted(ev)]

    def series(self, key: str, recs: list[dict[str, Any]] | None = None) -> tuple[list[int], list[float]]:
        recs = self.train if recs is None else recs
        pts = [(r["step"], float(r[key])) for r in recs if isinstance(r.get(key), (int, float))]
        return [p[0] for p in pts], [p[1] for p in pts]

    def eval_series_keys(self) -> list[tuple[str, str | None]]:
        """Every (metric, initial-order) key pair the evaluations used, in order of first use: a
        resumed run may evaluate against other judgements (eval.qrels added on resume turns
        nDCG@10_candidates into trec_eval's nDCG@10); each is its own series, never mixed."""
        from lrt.train.console import ndcg_keys

        out: list[tuple[str, str | None]] = []
        for rec in self.eval:
            main, init = ndcg_keys(rec)
            if main is not None and main not in [m for m, _ in out]:
                out.append((main, init))
        return out


def _draw(ax: Any, kind: str, runs: Sequence[Run]) -> bool:
    """Draw one panel; False when no run has data for it."""
    multi = len(runs) > 1
    drawn = False
    for i, run in enumerate(runs):
        color = f"C{i}"
        pre = f"{run.label}: " if multi else ""
        if kind == "loss":
            keys = ["loss"] + sorted({k for r in run.train for k in r if k.startswith("loss/")})
            if len(keys) == 2:  # a single term: loss/<term> equals loss, plot it once
                keys = keys[:1]
            for j, k in enumerate(keys):
                x, y = run.series(k)
                if x:
                    ax.plot(x, y, label=pre + k, color=color if multi else f"C{j}",
                            linestyle=["-", "--", ":", "-."][j % 4] if multi else "-", linewidth=1.2)
                    drawn = True
        elif kind in ("lr", "grad_norm"):
            x, y = run.series(kind)
            if x:
                ax.plot(x, y, label=pre + kind, color=color, linewidth=1.2)
                drawn = True
        else:
            pairs = run.eval_series_keys()
            for j, (main, init) in enumerate(pairs):
                x, y = run.series(main, run.eval)
                if not x:
                    continue
                c = color if not multi and len(pairs) == 1 else f"C{i + j}"
                name = main.removeprefix("eval/")
                ax.plot(x, y, label=pre + name, color=c, marker="o", markersize=3)
                refs = run.series(init, run.eval)[1] if init is not None else []
                if refs:  # the initial order does not change with the step (per kind of judgements)
                    what = "initial order" if len(pairs) == 1 else f"initial order ({name})"
                    ax.axhline(refs[0], color=c, linestyle="--", linewidth=1, label=pre + what)
                ax.set_ylabel(name if len(pairs) == 1 else "nDCG@10")
                drawn = True
    if drawn:
        ax.set_xlabel("step")
        if kind != "eval":
            ax.set_ylabel(YLABEL[kind])
        ax.set_title(TITLE[kind])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if kind == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        if kind == "loss":  # terms of very different size (lm ~5, ranknet ~0.1): log scale keeps all readable
            ys = [v for ln in ax.get_lines() for v in ln.get_ydata()]
            if ys and min(ys) > 0 and max(ys) / min(ys) > 20:
                ax.set_yscale("log")
    return drawn


def figures(runs: Sequence[Run], kinds: Sequence[str] = KINDS + ("overview",)) -> dict[str, Any]:
    """{kind: matplotlib Figure} for each panel with data, plus "overview" (all panels, 2x2)."""
    from matplotlib.figure import Figure

    out: dict[str, Any] = {}
    for kind in (k for k in KINDS if k in kinds):
        fig = Figure(figsize=(6.4, 4.0))
        fig.subplots_adjust(left=0.14, right=0.97, bottom=0.12, top=0.92)
        if _draw(fig.add_subplot(), kind, runs):
            out[kind] = fig
    if "overview" in kinds and any(r.train or r.eval for r in runs):
        fig = Figure(figsize=(11, 7.5))
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.07, top=0.92, hspace=0.3, wspace=0.22)
        axes = fig.subplots(2, 2).ravel()
        for ax, kind in zip(axes, KINDS):
            if not _draw(ax, kind, runs):
                ax.set_axis_off()
        fig.suptitle(", ".join(r.label for r in runs))
        out["overview"] = fig
    return out


def save(figs: dict[str, Any], out_dir: str | Path) -> list[Path]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, fig in figs.items():
        FigureCanvasAgg(fig)
        p = out / f"{kind}.png"
        tmp = p.with_suffix(".png.tmp")
        fig.savefig(tmp, dpi=110, format="png")
        tmp.replace(p)  # a reader never sees half a PNG
        paths.append(p)
    return paths


def plot_runs(run_dirs: Sequence[str | Path], out_dir: str | Path, labels: Sequence[str] | None = None) -> list[Path]:
    runs = [Run(d, labels[i] if labels else None) for i, d in enumerate(run_dirs)]
    return save(figures(runs), out_dir)


def write_run_plots(run_dir: str | Path, kinds: Sequence[str] = KINDS + ("overview",)) -> list[Path]:
    """`<run>/plots/*.png` for one run; never raises (a plot must not stop training). Training
    writes only `overview.png` at each evaluation (a few hundred ms) and every panel at the end."""
    try:
        return save(figures([Run(run_dir)], kinds), Path(run_dir) / "plots")
    except Exception as e:  # noqa: BLE001
        log.warning("plots of %s not written: %s", run_dir, e)
        return []
