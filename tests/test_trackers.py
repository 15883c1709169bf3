"""Trackers: `log.report_to` selects wandb / TensorBoard / trackio / MLflow, the environment wins
over the recipe, recipes default to no online tracker, and no tracker can stop or stall training."""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
import yaml

from lrt.cli import main as lrt_main
from lrt.config import load_recipe, recipe_from_dict
from lrt.errors import ConfigError
from lrt.train.metrics import MetricsLogger, resolve_trackers

REPO = Path(__file__).resolve().parents[1]


def _recipe(tmp_path, **log):
    return recipe_from_dict({"model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"}, "log": log,
                             "output_dir": str(tmp_path / "run")}, [], check_files=False)


def test_default_is_no_tracker(tmp_path):
    assert resolve_trackers(_recipe(tmp_path), {}) == {}


def test_environment_wins_over_recipe(tmp_path):
    r = _recipe(tmp_path, wandb="offline", report_to=["tensorboard"])
    assert resolve_trackers(r, {}) == {"tensorboard": "local", "wandb": "offline"}
    assert resolve_trackers(r, {"WANDB_MODE": "disabled"}) == {"tensorboard": "local"}
    assert resolve_trackers(r, {"WANDB_DISABLED": "true"}) == {"tensorboard": "local"}
    assert resolve_trackers(r, {"WANDB_MODE": "online"})["wandb"] == "online"
    assert resolve_trackers(r, {"LRT_REPORT_TO": "none"}) == {}
    assert resolve_trackers(r, {"LRT_REPORT_TO": "trackio,mlflow"}) == {"trackio": "local", "mlflow": "local"}
    # wandb named without a mode runs offline (never online unless asked)
    assert resolve_trackers(_recipe(tmp_path, report_to=["wandb"]), {}) == {"wandb": "offline"}
    with pytest.raises(ConfigError, match="LRT_REPORT_TO='neptune'"):
        resolve_trackers(r, {"LRT_REPORT_TO": "neptune"})


def test_shipped_recipes_have_no_online_tracker():
    for f in sorted((REPO / "recipes").glob("*.yaml")):
        r = load_recipe(f, check_files=False)
        modes = resolve_trackers(r, {})
        assert "wandb" not in modes and set(modes) <= {"tensorboard"}, f.name


def test_unknown_tracker_in_recipe_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="report_to"):
        _recipe(tmp_path, report_to=["neptune"])


def _train_yaml(tiny_model_dir, tiny_data, tmp_path, report_to) -> Path:
    rec = {
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"train": str(tiny_data / "train.jsonl"), "eval": str(tiny_data / "eval.jsonl"), "max_length": 512},
        "prompt": {"preset": "compact", "max_passage_tokens": 24},
        "train": {"max_steps": 4, "per_device_batch_size": 2, "grad_accum": 1, "lr": 1e-3, "log_every": 2,
                  "save_final": False},
        "eval": {"every": 2, "at_start": False},
        "log": {"report_to": report_to, "progress": False, "project": "lrt-test", "run_name": "tiny"},
        "output_dir": str(tmp_path / "run"),
    }
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(rec))
    return f


def test_all_trackers_receive_the_metrics(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # the test env disables wandb; this run exercises it offline
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    import trackio.utils  # TRACKIO_DIR is read at import: point the (possibly already imported) module here

    monkeypatch.setattr(trackio.utils, "TRACKIO_DIR", tmp_path / "trackio", raising=False)
    f = _train_yaml(tiny_model_dir, tiny_data, tmp_path, ["tensorboard", "trackio", "mlflow", "wandb"])
    assert lrt_main(["train", str(f)]) == 0
    run = tmp_path / "run"
    jsonl = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in jsonl if "loss" in r}
    ndcg = {r["step"]: r["eval/nDCG@10_candidates"] for r in jsonl if "eval/nDCG@10_candidates" in r}
    assert sorted(losses) == [2, 4] and sorted(ndcg) == [2, 4]
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["trackers"] == ["tensorboard", "trackio", "mlflow", "wandb (offline)"]

    # TensorBoard: event file with the same scalars
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run / "tensorboard"))
    ea.Reload()
    assert {s.step: s.value for s in ea.Scalars("loss")} == pytest.approx(losses)
    assert {s.step: s.value for s in ea.Scalars("eval/nDCG@10_candidates")} == pytest.approx(ndcg)

    # MLflow: file store in the run dir (eval/nDCG@10 is logged as eval.nDCG_at_10: '@' is not allowed)
    from mlflow.tracking import MlflowClient

    client = MlflowClient((run / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("lrt-test")
    (mr,) = client.search_runs([exp.experiment_id])
    assert {m.step: m.value for m in client.get_metric_history(mr.info.run_id, "loss")} == pytest.approx(losses)
    assert {m.step: m.value for m in client.get_metric_history(mr.info.run_id, "eval.nDCG_at_10_candidates")} \
        == pytest.approx(ndcg)

    # trackio: local SQLite under TRACKIO_DIR
    dbs = list((tmp_path / "trackio").glob("*.db"))
    assert [p.name for p in dbs] == ["lrt-test.db"]
    with sqlite3.connect(dbs[0]) as con:
        rows = con.execute("select step, metrics from metrics").fetchall()
    got: dict = {}
    for s, m in rows:  # a step has a training row and an evaluation row
        got.setdefault(s, {}).update(json.loads(m))
    assert {s: got[s]["loss"] for s in losses} == pytest.approx(losses)

    # wandb offline: a local run directory with the run file
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))


def test_unreachable_online_trackers_never_stall(tiny_model_dir, tiny_data, tmp_path, monkeypatch, caplog):
    """wandb online without network would block ~100 s: lrt probes the host (3 s) and goes offline;
    an MLflow server that does not answer is dropped with a warning; training finishes."""
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    f = _train_yaml(tiny_model_dir, tiny_data, tmp_path, ["wandb", "mlflow"])
    t0 = time.monotonic()
    with caplog.at_level("WARNING", logger="lrt"):
        assert lrt_main(["train", str(f)]) == 0
    assert time.monotonic() - t0 < 120
    msgs = " ".join(r.getMessage() for r in caplog.records)
    assert "wandb: http://127.0.0.1:9 unreachable; logging offline" in msgs
    assert "mlflow init failed" in msgs
    assert json.loads((tmp_path / "run" / "run_summary.json").read_text())["trackers"] == ["wandb (offline)"]


def test_a_failing_tracker_is_dropped_not_fatal(tmp_path, caplog, monkeypatch):
    r = _recipe(tmp_path, report_to=["tensorboard"])
    m = MetricsLogger(tmp_path / "run", r, enabled=True)
    assert [t.name for t in m.trackers] == ["tensorboard"]

    def disk_full(*a, **k):  # injected fault: the event file's disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(m.trackers[0].w, "add_scalar", disk_full)
    with caplog.at_level("WARNING", logger="lrt"):
        m.log({"step": 1, "loss": 1.0})
        m.log({"step": 2, "loss": 0.5})
    assert m.trackers == [] and "tensorboard logging failed" in caplog.text
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    m.close()
