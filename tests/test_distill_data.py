"""Teacher scores from prep to the loss: the canonical row field, the prep job that writes it, the Arrow
cache and the collators that carry it (aligned with its candidates through window cuts, re-ranking and
group sampling), and the one clear error when a distillation recipe meets data without it."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from lrt.cli import main as cli_main
from lrt.data.schema import Candidate, ListwiseExample, example_from_row, write_examples

REPO = Path(__file__).resolve().parents[1]
LABELS = REPO / "lrt/resources/data/fullrank/msmarco_gpt-4o-2024-08-06_bm25-top100-slidingwindow_9passes.jsonl"


def _examples(n: int = 8, k: int = 5) -> list[ListwiseExample]:
    """Display order != teacher order != score order of position; scores are distinct per docid."""
    out = []
    for q in range(n):
        cands = [Candidate(f"q{q}d{i}", f"passage {i} of query {q} the quick brown fox") for i in range(k)]
        ranking = [cands[(i * 2 + q) % k].docid for i in range(k)]
        scores = [100.0 * q + 7.0 * ((i * 3 + q) % k) + 0.25 * i for i in range(k)]
        out.append(ListwiseExample(f"q{q}", f"query {q} fox", cands, ranking, None, None, scores))
    return out


def _recipe(tmp_path: Path, model_dir, train: Path, name: str = "r", **over) -> Path:
    raw = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(train), "max_length": 512},
        "prompt": {"preset": "compact", "max_passage_tokens": 24},
        "loss": [{"name": "margin_mse", "weight": 1.0}, {"name": "kl_distill", "weight": 1.0,
                                                         "params": {"temperature": 2.0}}],
        "train": {"max_steps": 1, "per_device_batch_size": 2, "grad_accum": 1, "save_final": False},
        "eval": {"at_start": False, "at_end": False},
        "log": {"progress": False},
        "output_dir": str(tmp_path / name),
    }
    for k, v in over.items():
        sec, key = k.split("__")
        raw[sec][key] = v
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_row_field_roundtrips_and_bad_values_name_the_line(tmp_path):
    ex = _examples(1)[0]
    assert example_from_row(ex.to_row()).teacher_scores == ex.teacher_scores
    for suffix in (".jsonl", ".parquet"):  # both writers keep it
        p = write_examples([ex, _examples(2)[1]], tmp_path / f"d{suffix}")
        from lrt.data.schema import load_examples

        assert [e.teacher_scores for e in load_examples(p)[0]] == [ex.teacher_scores, _examples(2)[1].teacher_scores]
    bad = tmp_path / "bad.jsonl"
    rows = [ex.to_row(), {**ex.to_row(), "qid": "x", "teacher_scores": [1.0, 2.0]},
            {**ex.to_row(), "qid": "y", "teacher_scores": [1.0, float("nan"), 0, 0, 0]}]
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from lrt.data.schema import SkipReport, iter_examples

    rep = SkipReport()
    assert [e.qid for e in iter_examples(bad, rep, on_invalid="skip")] == ["q0"]
    assert any("bad.jsonl:2: `teacher_scores` must be a list of numbers aligned with `candidates` (got 2 values "
               "for 5 candidates)" in e for e in rep.examples)
    assert any("bad.jsonl:3: `teacher_scores` must be finite numbers (NaN/Infinity at position(s) [1])" in e
               for e in rep.examples)


def test_teacher_scores_stay_with_their_candidates_through_cache_window_and_collator(tiny_model_dir, tmp_path):
    """The real training data path (Arrow examples + encoded stores, the collator): every [b, i] entry of
    batch['teacher_scores'] is the score of the candidate whose identifier id is cand_ids[b, i] and
    whose teacher rank (re-ranked inside the window) is ranks[b, i]."""
    from lrt.config import load_recipe
    from lrt.data.collate import ListwiseCollator
    from lrt.train.data import prepare_data
    from lrt.train.dist import DistEnv
    from lrt.objective.objective import Objective

    exs = _examples(6, 5)
    train = write_examples(exs, tmp_path / "train.jsonl")
    r = load_recipe(_recipe(tmp_path, tiny_model_dir, train, data__window=3))
    env = DistEnv(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    data = prepare_data(r, env, Objective.from_recipe(r))
    assert data.cache_dir is not None and type(data.rows).__name__ == "EncodedRows"  # the Arrow store
    pad = data.tok.pad_token_id if data.tok.pad_token_id is not None else data.tok.eos_token_id
    for side in ("left", "right"):
        batch = ListwiseCollator(pad, side)(data.rows.take([0, 3, 5]))
        assert batch["teacher_scores"].shape == batch["ranks"].shape == (3, 3)
        for b, q in enumerate([0, 3, 5]):
            ex = exs[q]
            win = ex.candidates[:3]
            by_rank = sorted(win, key=lambda c: ex.ranking.index(c.docid))
            for i, c in enumerate(win):
                assert float(batch["teacher_scores"][b, i]) == pytest.approx(ex.teacher_scores[i])
                assert int(batch["ranks"][b, i]) == by_rank.index(c) + 1
                assert int(batch["cand_ids"][b, i]) == data.id_ids[i]  # identifier i <-> candidate i
    # lists of different lengths: the padding holds 0 and is masked by ranks == 0
    short = ListwiseExample("s", "q", exs[0].candidates[:2], [exs[0].candidates[1].docid, exs[0].candidates[0].docid],
                            teacher_scores=[5.0, -5.0])
    from lrt.data.collate import encode_example

    enc = [encode_example(data.tok, data.template, e, max_length=512, id_token_ids=data.id_ids, window=3)
           for e in (exs[1], short)]
    batch = ListwiseCollator(pad)(enc)
    assert batch["teacher_scores"][1].tolist() == [5.0, -5.0, 0.0] and batch["ranks"][1].tolist() == [2, 1, 0]


def test_pointwise_group_sampling_keeps_scores_with_their_pairs():
    from lrt.data.pointwise import PointwiseCollator

    rows = [{"pairs": [[10 + i] for i in range(6)], "ranks": [4, 1, 6, 2, 5, 3], "relevance": None,
             "teacher_scores": [0.5, 9.0, -3.0, 4.0, 1.0, 2.0], "index": j} for j in range(3)]
    col = PointwiseCollator(pad_token_id=0, negatives=2, seed=7)
    for step in range(4):
        batch = col(rows, step=step)
        for b in range(3):
            for n in range(3):
                p = int(batch["pair_index"][b, n])
                orig = int(batch["input_ids"][p, -1]) - 10  # the pair's own token tells which candidate it is
                assert float(batch["teacher_scores"][b, n]) == rows[b]["teacher_scores"][orig]
            assert int(batch["ranks"][b][batch["teacher_scores"][b].argmax()]) == 1  # rank-1 kept, best score


@pytest.mark.parametrize("cache", [True, False])
def test_distillation_on_data_without_teacher_scores_is_one_clear_error(tiny_model_dir, tmp_path, capsys, cache):
    exs = _examples(4)
    exs[2].teacher_scores = None
    train = write_examples(exs, tmp_path / "train.jsonl")
    recipe = _recipe(tmp_path, tiny_model_dir, train, data__cache=cache)
    assert cli_main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {train}:3: no `teacher_scores`, but loss term(s) kl_distill, "
                                               "margin_mse train on the teacher's score of each candidate")
    assert "teacher.kind=scores" in err[0] and "remove the term(s)" in err[0]
    assert cli_main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {train} (1 of 4 lists, e.g. qid 'q2'): no `teacher_scores`")
    assert not (tmp_path / "r" / "metrics.jsonl").exists()  # refused before any step
    # the same data without the distillation terms trains: teacher scores are needed by those terms only
    other = _recipe(tmp_path, tiny_model_dir, train, name="plain", data__cache=cache)
    raw = yaml.safe_load(other.read_text())
    raw["loss"] = [{"name": "ranknet", "weight": 1.0}]
    other.write_text(yaml.safe_dump(raw))
    assert cli_main(["validate", str(other)]) == 0


def test_scores_teacher_job_writes_each_candidates_score(tmp_path, monkeypatch):
    """`lrt prep` with a scores teacher and labels.teacher_scores: the rows carry the run's score of every
    candidate, in display order; a list with an unscored candidate keeps none and is counted."""
    from lrt.prep.job import main as prep_main

    monkeypatch.chdir(REPO)
    rows = [json.loads(x) for _, x in zip(range(4), LABELS.open())]
    run = tmp_path / "ce.run"
    lines = []
    for q, row in enumerate(rows):
        for i, d in enumerate(row["initial_list"][:8]):
            if q == 3 and i == 5:
                continue  # the cross-encoder did not score this one
            lines.append(f"{row['qid']} Q0 {d} {i + 1} {((i * 5 + q) % 8) - 3.5 + 0.125 * q} ce")
    run.write_text("\n".join(lines) + "\n")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "name": "distill-test", "source": {"kind": "fullrank", "path": str(LABELS), "synthetic_text": True, "limit": 4},
        "teacher": {"kind": "scores", "format": "run", "path": str(run)},
        "labels": {"window": 8, "stride": 4, "max_candidates": 8, "teacher_scores": True},
        "output": {"dir": str(tmp_path / "out")}}))
    assert prep_main([str(job)]) == 0
    got = {r["qid"]: r for r in pq.read_table(tmp_path / "out" / "data.parquet").to_pylist()}
    table = {}
    for ln in lines:
        q, _, d, _, s, _ = ln.split()
        table.setdefault(q, {})[d] = float(s)
    for q, row in enumerate(rows[:3]):
        r = got[row["qid"]]
        assert r["teacher_scores"] == [table[row["qid"]][c["docid"]] for c in r["candidates"]]
        assert r["ranking"] == sorted((c["docid"] for c in r["candidates"]), key=lambda d: -table[row["qid"]][d])
    assert got[rows[3]["qid"]]["teacher_scores"] is None
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert card["counts"]["lists_with_teacher_scores"] == 3 and card["counts"]["lists_without_teacher_scores"] == 1
    # the merged output is training data for a distillation recipe (only the unscored list is refused)
    from lrt.data.schema import load_examples

    exs = load_examples(tmp_path / "out" / "data.parquet")[0]
    assert [e.teacher_scores is not None for e in exs] == [True, True, True, False]


def test_shipped_distillation_recipe_validates_on_what_its_data_job_writes(tmp_path, monkeypatch, capsys):
    """recipes/first-mistral-7b-distill.yaml + data_prep/distill-scores.yaml: the job (run here on the shipped
    fullrank lists with synthetic texts and a generated cross-encoder run) writes rows that `lrt validate`
    accepts for the recipe's distillation terms."""
    from lrt.prep.job import load_job, main as prep_main

    monkeypatch.chdir(REPO)
    job, recipe = REPO / "data_prep" / "distill-scores.yaml", REPO / "recipes" / "first-mistral-7b-distill.yaml"
    assert cli_main(["validate", str(recipe), "--no-file-check"]) == 0
    from lrt.config import load_recipe

    r = load_recipe(recipe, check_files=False)
    assert {t.name for t in r.loss} >= {"kl_distill", "margin_mse"}
    cfg = load_job(job)
    assert cfg.teacher.kind == "scores" and cfg.labels.teacher_scores
    assert str(Path(r.data.train).parent) == cfg.output.dir
    rows = [json.loads(x) for _, x in zip(range(3), LABELS.open())]
    run = tmp_path / "ce.run"
    run.write_text("".join(f"{row['qid']} Q0 {d} {i + 1} {-0.5 * i + 0.01 * (i % 3)} ce\n"
                           for row in rows for i, d in enumerate(row["initial_list"][:20])))
    out = tmp_path / "out"
    assert prep_main([str(job), "source.corpus=null", "source.queries=null", "source.synthetic_text=true",
                      "source.limit=3", f"teacher.path={run}", f"output.dir={out}"]) == 0
    capsys.readouterr()
    assert cli_main(["validate", str(recipe), f"data.train={out / 'data.parquet'}", "data.eval=null",
                     "eval.every=null", "eval.select_best=false"]) == 0
    assert "data.train: 3 valid rows" in capsys.readouterr().out


def test_relabelling_drops_another_teachers_scores_and_counts_them(tmp_path):
    """A canonical source relabelled by a new teacher without labels.teacher_scores: the old scores belong
    to the old teacher, so they are not written beside the new ranking (counted in the card)."""
    from lrt.prep.job import main as prep_main

    exs = _examples(3)
    write_examples(exs, tmp_path / "rows.jsonl")
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("".join(f"{e.qid} 0 {c.docid} {i % 3}\n" for e in exs for i, c in enumerate(e.candidates)))
    job = tmp_path / "job.yaml"
    base = {"name": "relabel", "source": {"kind": "canonical", "path": str(tmp_path / "rows.jsonl")},
            "teacher": {"kind": "scores", "format": "qrels", "path": str(qrels)},
            "labels": {"window": 5, "stride": 2}, "output": {"dir": str(tmp_path / "out")}}
    job.write_text(yaml.safe_dump(base))
    assert prep_main([str(job)]) == 0
    rows = pq.read_table(tmp_path / "out" / "data.parquet").to_pylist()
    assert all(r["teacher_scores"] is None for r in rows)
    assert json.loads((tmp_path / "out" / "card.json").read_text())["counts"]["stale_teacher_scores_dropped"] == 3
    job.write_text(yaml.safe_dump({**base, "labels": {"window": 5, "stride": 2, "teacher_scores": True},
                                   "output": {"dir": str(tmp_path / "out2")}}))
    assert prep_main([str(job)]) == 0
    rows = pq.read_table(tmp_path / "out2" / "data.parquet").to_pylist()
    assert [r["teacher_scores"] for r in rows] == [[float(i % 3) for i in range(5)]] * 3
