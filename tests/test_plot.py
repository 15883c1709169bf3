"""Plots: the figures hold the expected series and labels, the PNGs are real images, `lrt plot`
overlays runs, and training writes the run's plots by itself."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrt.cli import main as lrt_main
from lrt.plot import Run, figures


def fake_run(d: Path, steps=(2, 4, 6), evals=(0, 3, 6), scale=1.0, key="eval/nDCG@10_candidates") -> Path:
    """A metrics.jsonl as training writes it (interval records + evaluation records)."""
    d.mkdir(parents=True)
    recs = []
    for i, s in enumerate(steps):
        recs.append({"step": s, "loss": scale * (3 - 0.3 * i), "loss/lm": scale * (2 - 0.2 * i),
                     "loss/ranknet": scale * (0.1 - 0.01 * i), "lr": 1e-3 * (1 - i / 3), "grad_norm": 5.0 - i,
                     "lists": 8, "log_steps": 2})
    for i, s in enumerate(evals):
        recs.append({"step": s, key: 0.5 + 0.05 * i * scale, key.replace("eval/", "eval/initial_"): 0.5, "eval/queries": 6})
    recs.sort(key=lambda r: r["step"])
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return d


def _lines(ax):
    return {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines()}


def test_figures_have_expected_series_and_labels(tmp_path):
    figs = figures([Run(fake_run(tmp_path / "a"))])
    assert set(figs) == {"loss", "lr", "grad_norm", "eval", "overview"}
    ax = figs["loss"].axes[0]
    lines = _lines(ax)
    assert set(lines) == {"loss", "loss/lm", "loss/ranknet"}
    assert lines["loss/lm"] == ([2, 4, 6], pytest.approx([2.0, 1.8, 1.6]))
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "loss (interval mean)"
    assert _lines(figs["lr"].axes[0])["lr"][1] == pytest.approx([1e-3, 1e-3 * 2 / 3, 1e-3 / 3])
    assert figs["grad_norm"].axes[0].get_ylabel() == "grad norm (pre-clip)"
    ev = figs["eval"].axes[0]
    el = _lines(ev)
    assert el["nDCG@10_candidates"] == ([0, 3, 6], pytest.approx([0.5, 0.55, 0.6]))
    assert set(el["initial order"][1]) == {0.5}  # the reference line at the initial order's nDCG
    assert ev.get_xlabel() == "step" and ev.get_ylabel() == "nDCG@10_candidates"
    assert len(figs["overview"].axes) == 4


def test_full_qrels_key_and_no_eval(tmp_path):
    figs = figures([Run(fake_run(tmp_path / "a", evals=(0, 6), key="eval/nDCG@10"))])
    assert set(_lines(figs["eval"].axes[0])) == {"nDCG@10", "initial order"}
    figs = figures([Run(fake_run(tmp_path / "b", evals=()))])
    assert "eval" not in figs and "loss" in figs


def test_lrt_plot_overlays_runs(tmp_path, capsys):
    a, b = fake_run(tmp_path / "a"), fake_run(tmp_path / "b", scale=2.0)
    out = tmp_path / "plots"
    assert lrt_main(["plot", str(a), str(b), "--out", str(out), "--label", "base", "--label", "big"]) == 0
    printed = capsys.readouterr().out.split()
    for kind in ("loss", "lr", "grad_norm", "eval", "overview"):
        png = out / f"{kind}.png"
        assert str(png) in printed
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    figs = figures([Run(a, "base"), Run(b, "big")])
    assert {"base: loss/lm", "big: loss/lm", "base: loss", "big: loss"} <= set(_lines(figs["loss"].axes[0]))
    assert {"base: nDCG@10_candidates", "big: nDCG@10_candidates", "base: initial order"} <= set(_lines(figs["eval"].axes[0]))


def test_lrt_plot_errors(tmp_path, capsys):
    assert lrt_main(["plot", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    a = fake_run(tmp_path / "a")
    assert lrt_main(["plot", str(a), "--label", "x", "--label", "y"]) == 2


def test_training_writes_plots(tiny_model_dir, tiny_data, tmp_path):
    from lrt.config import recipe_from_dict
    from lrt.workflows.run import train

    rec = {
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"train": str(tiny_data / "train.jsonl"), "eval": str(tiny_data / "eval.jsonl"), "max_length": 512},
        "prompt": {"preset": "compact", "max_passage_tokens": 24},
        "train": {"max_steps": 4, "per_device_batch_size": 2, "grad_accum": 1, "lr": 1e-3, "log_every": 1,
                  "save_final": False},
        "eval": {"every": 2, "at_start": False}, "log": {"progress": False}, "output_dir": str(tmp_path / "run"),
    }
    train(recipe_from_dict(rec, []))
    plots = tmp_path / "run" / "plots"
    for kind in ("loss", "lr", "grad_norm", "eval", "overview"):
        assert (plots / f"{kind}.png").stat().st_size > 5000, kind
    figs = figures([Run(tmp_path / "run")])
    x, y = _lines(figs["loss"].axes[0])["loss"]
    assert x == [1, 2, 3, 4] and all(v > 0 for v in y)
    assert _lines(figs["eval"].axes[0])["nDCG@10_candidates"][0] == [2, 4]
