"""The tokenised dataset cache: the same batches and losses as the in-memory path, rows read lazily
from the mapped store, a rebuild on any fingerprint change (never a stale reuse), `lrt prep tokenize`
shards that training then uses, and DataLoader-worker collation equal to the inline path."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
import yaml

from lrt.cli import main as lrt_main
from lrt.config import recipe_from_dict
from lrt.data.cache import EncodedRows, LazyExamples
from lrt.train.data import prepare_data
from lrt.train.dist import DistEnv
from lrt.train.loop import Trainer
from lrt.objective.objective import Objective

ENV1 = DistEnv(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


def raw_recipe(model_dir, data_dir, out, **data_kw) -> dict:
    data = {"train": str(data_dir / "train.jsonl"), "eval": str(data_dir / "eval.jsonl"), "max_length": 512}
    data.update(data_kw)
    return {
        "model": {"name_or_path": str(model_dir)},
        "data": data,
        "prompt": {"preset": "compact", "max_passage_tokens": 24},
        "train": {"max_steps": 4, "per_device_batch_size": 2, "grad_accum": 2, "lr": 1e-3, "log_every": 1,
                  "warmup_steps": 1, "save_final": False},
        "eval": {"at_start": False, "at_end": False},
        "log": {"progress": False},
        "output_dir": str(out),
    }


def _equal_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k


def test_cached_path_gives_the_uncached_batches_and_losses(tiny_model_dir, tiny_data, tmp_path):
    ts = {c: Trainer(recipe_from_dict(raw_recipe(tiny_model_dir, tiny_data, tmp_path / f"run-{c}"), [f"data.cache={c}"]))
          for c in ("true", "false")}
    cached, plain = ts["true"], ts["false"]
    # lazily read from the mapped store, not Python lists of every row / every text
    assert isinstance(cached.rows, EncodedRows) and isinstance(cached.train_examples, LazyExamples)
    assert isinstance(cached.eval_examples, LazyExamples) and isinstance(plain.rows, list)
    assert len(cached.rows) == len(plain.rows) == 24
    assert [e.qid for e in cached.eval_examples] == [e.qid for e in plain.eval_examples]
    assert cached.eval_examples[2].candidates == plain.eval_examples[2].candidates
    for s in range(cached.total_steps):
        _equal_batches(cached.batches.step(s), plain.batches.step(s))
    hist = {c: t.fit().history for c, t in ts.items()}
    assert [h["loss"] for h in hist["true"]] == [h["loss"] for h in hist["false"]]  # bitwise
    assert len(hist["true"]) == 4


def _dirs(root: Path, kind: str) -> set[str]:
    return {p.name for p in root.glob(f"{kind}-*") if (p / "manifest.json").is_file()}


def test_fingerprint_reuses_identical_and_rebuilds_on_any_change(tiny_model_dir, tmp_path, caplog):
    from lrt.data.schema import write_examples
    from lrt.testing.tiny import random_examples

    data = tmp_path / "data"
    write_examples(random_examples(8, 5, seed=0), data / "train.jsonl")
    write_examples(random_examples(3, 5, seed=1), data / "eval.jsonl")
    root = tmp_path / "cache"

    def prep(*over: str):
        r = recipe_from_dict(raw_recipe(tiny_model_dir, data, tmp_path / "run", cache_dir=str(root)), list(over))
        return prepare_data(r, ENV1, Objective.from_recipe(r))

    caplog.set_level(logging.INFO, logger="lrt")
    d0 = prep()
    ex0, enc0 = _dirs(root, "examples"), _dirs(root, "encoded")
    assert len(ex0) == 2 and len(enc0) == 1  # train + eval examples, train encoded
    caplog.clear()
    d1 = prep()
    assert _dirs(root, "examples") == ex0 and _dirs(root, "encoded") == enc0
    assert "tokenising" not in caplog.text and "validated" not in caplog.text  # opened, not rebuilt
    assert [d1.rows[i] for i in range(len(d1.rows))] == [d0.rows[i] for i in range(len(d0.rows))]

    prep("data.max_length=400")  # encoding setting: new encoded store, same examples
    assert _dirs(root, "examples") == ex0 and len(_dirs(root, "encoded")) == 2
    prep("prompt.max_passage_tokens=20")  # template
    prep("prompt.preset=first_alpha")  # template + identifier scheme
    assert len(_dirs(root, "encoded")) == 4
    prep("data.window=4")  # the window lifts the alpha limit on list length: new examples stores too
    assert len(_dirs(root, "encoded")) == 5 and len(_dirs(root, "examples")) == 4

    # same size and mtime, different contents: a stale cache is never reused
    f = data / "train.jsonl"
    st = f.stat()
    rows = [json.loads(x) for x in f.read_text().splitlines()]
    rows[0]["query"] = rows[0]["query"][::-1]
    f.write_text("".join(json.dumps(x) + "\n" for x in rows))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    d2 = prep()
    assert len(_dirs(root, "examples")) == 5 and len(_dirs(root, "encoded")) == 6
    assert d2.train_examples[0].query == rows[0]["query"]


def test_fingerprint_covers_tokenizer_and_code(tiny_model_dir, monkeypatch):
    from lrt.data import cache
    from lrt.testing.tiny import build_tokenizer

    a, b = build_tokenizer("chatml"), build_tokenizer("chatml")
    assert cache.tokenizer_fingerprint(a) == cache.tokenizer_fingerprint(b)
    b.add_tokens(["zzqq"])
    assert cache.tokenizer_fingerprint(a) != cache.tokenizer_fingerprint(b)
    assert cache.tokenizer_fingerprint(a) != cache.tokenizer_fingerprint(build_tokenizer("zephyr"))
    k = cache.encoded_key("ex", a, {"max_length": 512})
    import lrt

    monkeypatch.setattr(lrt, "__version__", "999.0")
    assert cache.encoded_key("ex", a, {"max_length": 512}) != k


def test_prep_tokenize_shards_then_training_only_maps(tiny_model_dir, tiny_data, tmp_path, caplog, capsys):
    root = tmp_path / "cache"
    raw = raw_recipe(tiny_model_dir, tiny_data, tmp_path / "run", cache_dir=str(root))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    assert lrt_main(["prep", "tokenize", str(recipe), "--num-shards", "3", "--shard-id", "1"]) == 0
    assert "shard 1/3" in capsys.readouterr().out and not _dirs(root, "encoded")
    caplog.set_level(logging.INFO, logger="lrt")
    # a training start finds the unfinished sharded build and completes only the missing shards
    t = Trainer(recipe_from_dict(raw, []))
    assert "shard 0/3" in caplog.text and "shard 2/3" in caplog.text and "shard 1/3" not in caplog.text
    (enc,) = _dirs(root, "encoded")
    assert json.loads((root / enc / "manifest.json").read_text())["num_shards"] == 3
    plain = Trainer(recipe_from_dict(raw, ["data.cache=false", f"output_dir={tmp_path / 'run2'}"]))
    assert [t.rows[i] | {"length": 0} for i in range(24)] == [dict(r, length=0) for r in plain.rows]
    # all shards by the CLI: training then only maps
    root2 = tmp_path / "cache2"
    recipe.write_text(yaml.safe_dump(raw_recipe(tiny_model_dir, tiny_data, tmp_path / "run3", cache_dir=str(root2))))
    for i in range(2):
        assert lrt_main(["prep", "tokenize", str(recipe), "--num-shards", "2", "--shard-id", str(i), "data.num_proc=2"]) == 0
    assert "cache ready: 24 lists" in capsys.readouterr().out
    caplog.clear()
    t3 = Trainer(recipe_from_dict(yaml.safe_load(recipe.read_text()), []))
    assert "tokenising" not in caplog.text
    assert [t3.rows[i] for i in range(24)] == [t.rows[i] for i in range(24)]


def test_prep_tokenize_user_errors(tiny_model_dir, tiny_data, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw_recipe(tiny_model_dir, tiny_data, tmp_path / "run")))
    assert lrt_main(["prep", "tokenize", str(recipe), "--num-shards", "2", "--shard-id", "2"]) == 2
    assert "error: --shard-id 2 --num-shards 2" in capsys.readouterr().err
    assert lrt_main(["prep", "tokenize", str(recipe), "data.cache=false"]) == 2
    assert "data.cache is false" in capsys.readouterr().err


def test_dataloader_workers_collate_exactly_the_inline_batches(tiny_model_dir, tiny_data, tmp_path):
    raw = raw_recipe(tiny_model_dir, tiny_data, tmp_path / "run")
    raw["train"]["max_steps"] = 6
    t0 = Trainer(recipe_from_dict(raw, []))
    tw = Trainer(recipe_from_dict(raw, ["data.num_workers=2"]))
    inline = [t0.batches.step(s) for s in range(6)]
    _equal_batches(sum(inline, []), sum((tw.batches.step(s) for s in range(6)), []))
    _equal_batches(sum(inline[3:], []), sum((tw.batches.step(s) for s in range(3, 6)), []))  # re-opened at step 3
    assert [h["loss"] for h in t0.fit().history] == [h["loss"] for h in tw.fit().history]


def test_examples_store_round_trips_every_field(tmp_path):
    """Titles, missing relevance and per-query qrels come back exactly as the loader gives them."""
    from lrt.data.cache import open_examples
    from lrt.data.schema import load_examples, write_examples
    from lrt.testing.tiny import random_examples

    exs = random_examples(6, 4, seed=2)
    exs[0].relevance = None
    exs[1].qrels = {exs[1].candidates[0].docid: 2, "unjudged-elsewhere": 1}
    exs[2].candidates[1] = type(exs[2].candidates[1])(exs[2].candidates[1].docid, "text", "A title")
    src = write_examples(exs, tmp_path / "t.jsonl")
    lazy, meta = open_examples(tmp_path / "c", str(src), "train", "error", None, None)
    assert list(lazy) == load_examples(src)[0] and meta["rows"] == 6
    assert list(lazy[1:4]) == load_examples(src)[0][1:4] and list(lazy.n_candidates) == [4] * 6


@pytest.mark.slow
def test_bench_data_startup_reports_rss_and_time_per_rank(tmp_path, capsys):
    """`lrt bench data --startup` runs the Trainer's data start-up in fresh ranks (first run, then from
    the cache) and reports per-rank RSS growth and time; the numbers are measured, not asserted."""
    from lrt.bench import main as bench_main

    assert bench_main(["data", "--startup", "--lists", "6", "--words", "20", "--procs", "1", "--modes", "cached",
                       "--workdir", str(tmp_path)]) == 0
    recs = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [(r["path"], r["phase"], r["procs"]) for r in recs] == [("cached", "first", 1), ("cached", "cached", 1)]
    assert all(r["lists"] == 6 and len(r["rss_growth_mb_per_rank"]) == 1 and r["seconds_max_rank"] > 0 for r in recs)
    assert len(_dirs(tmp_path / "cache", "encoded")) == 1  # the second start reused the first one's store
