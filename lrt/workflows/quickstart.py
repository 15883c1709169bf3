"""`lrt quickstart`: generate the demo data, train the tiny reranker, export it, and show the
nDCG@10 of its first-token reranking against the initial candidate order on held-out queries.

Everything is offline and deterministic: the data come from `lrt.demo.world`, the backbone and
tokenizer are shipped in `lrt/assets/tiny-backbone` (built by `research/pretrain_lookup_backbone.py`).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lrt.config import PACKAGE_DIR, load_recipe
from lrt.errors import LrtError
from lrt.families import of_recipe

RECIPE = PACKAGE_DIR / "resources" / "recipes" / "quickstart.yaml"
RECIPES = {"first_token": RECIPE, "pointwise": PACKAGE_DIR / "resources" / "recipes" / "quickstart-pointwise.yaml"}
# What "the model learned to rank" means here (issue: +0.03 nDCG@10 over both baselines, p < 0.01).
MIN_GAIN, MAX_P = 0.03, 0.01
# The demo task (see lrt/assets/tiny-backbone/README.md for how these were chosen and measured).
TASK = {"n_candidates": 5, "query_words": 1, "passage_len": (4, 6)}
SPLITS = {"train": (20000, 11), "eval": (500, 12)}  # (queries, seed): disjoint random streams
# Queries come only from the quickstart half of the lexicon (`vocabulary_split`): the shipped
# backbone's lookup pretraining never asked about any of these words. The tag in the file names
# keeps a run directory from an older lrt (queries from the whole lexicon) from being reused.
DATA_TAG = "qhalf"


def make_data(out: Path, max_queries: int | None = None) -> dict[str, Path]:
    """The demo splits (cached by size); `max_queries` caps each split for a short smoke run."""
    from lrt.demo.world import make_split, vocabulary_split, write_jsonl

    queries = vocabulary_split()[1]
    paths = {}
    for name, (n, seed) in SPLITS.items():
        n = min(n, max_queries) if max_queries else n
        p = out / (f"{name}-{DATA_TAG}.jsonl" if n == SPLITS[name][0] else f"{name}-{DATA_TAG}-{n}.jsonl")
        if not p.exists():
            write_jsonl(make_split(n, TASK["n_candidates"], seed, query_words=TASK["query_words"],
                                   passage_len=TASK["passage_len"], qid_prefix=name, query_vocabulary=queries), p)
        paths[name] = p
    return paths


MARKER = ".lrt-quickstart"  # written into <out>/run by quickstart: only such a run dir is replaced on a re-run


def claim_run_dir(run: Path) -> None:
    """Quickstart re-runs start over (train.overwrite_output_dir), which removes the checkpoints,
    metrics and final/ in `run`: allowed only for a run dir quickstart created and marked, never for
    an unrelated training run that happens to live at <out>/run."""
    from lrt.train.checkpoint import previous_run

    used = previous_run(run)
    if used and not (run / MARKER).is_file():
        raise LrtError(f"--out {run.parent}: {run} holds a training run quickstart did not create ({', '.join(used)}); "
                       "quickstart would delete it: choose another --out (or remove that run yourself)")
    run.mkdir(parents=True, exist_ok=True)
    (run / MARKER).write_text("created by `lrt quickstart`; a re-run replaces this run\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lrt quickstart", description=__doc__)
    p.add_argument("--out", default="outputs/quickstart", help="run directory (data, checkpoints, export)")
    p.add_argument("--mode", choices=sorted(RECIPES), default="first_token",
                   help="first_token: FIRST listwise reranker (default); pointwise: yes/no pair scorer, same world")
    p.add_argument("--recipe", default=None, help="recipe to run (default: the shipped one for --mode)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="cap training at N steps (and the data at what they use): a short smoke run of the pipeline")
    p.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.max_steps=100")
    a = p.parse_args(argv)
    a.recipe = a.recipe or str(RECIPES[a.mode])
    if not Path(a.recipe).exists():
        raise LrtError(f"{a.recipe}: quickstart recipe not found (shipped at lrt/resources/recipes/quickstart.yaml; "
                       "reinstall lrt, or pass --recipe)")
    if a.max_steps is not None and a.max_steps < 1:
        raise LrtError(f"--max-steps must be >= 1 (got {a.max_steps})")
    t0 = time.perf_counter()
    out = Path(a.out)
    claim_run_dir(out / "run")
    cap = [f"train.max_steps={a.max_steps}", f"eval.every={a.max_steps}", "train.warmup_steps=0"] if a.max_steps else []
    data = make_data(out / "data", max(256, 32 * a.max_steps) if a.max_steps else None)
    recipe = load_recipe(a.recipe, [f"data.train={data['train']}", f"data.eval={data['eval']}",
                                    f"output_dir={out / 'run'}", "train.resume=none",
                                    "train.overwrite_output_dir=true", *cap, *a.overrides])  # a re-run starts over
    from lrt.workflows.run import Run

    trainer = Run(recipe)  # fit(): train, then RUN/final and the plots
    try:
        res = trainer.fit()
    finally:
        trainer.release()  # signal handlers and the run-dir lock
    t_train = time.perf_counter() - t0
    if not res.eval_history or res.final_dir is None:
        raise LrtError("the quickstart recipe must evaluate at the end and export (eval.at_end, train.save_final)")
    first, last = res.eval_history[0], res.eval_history[-1]
    # reload the exported checkpoint and rerank the held-out queries again: same ordering expected
    from lrt.rerank import Reranker
    from lrt.train.evaluation import eval_judgements, eval_ndcg, headline_keys

    t_rr = time.perf_counter()
    rr = Reranker.from_pretrained(res.final_dir, device="cpu")  # the export's own mode (pointwise or first-token)
    ranked = rr.rerank_many([(e.qid, e.query, e.candidates) for e in trainer.eval_examples])
    ms_per_query = 1000 * (time.perf_counter() - t_rr) / max(1, len(ranked))
    exported = {q: [d for d, _ in v] for q, v in ranked.items()}
    same = exported == trainer.last_rankings
    qrels, kind = eval_judgements(trainer.eval_examples, recipe.eval.qrels)
    key, init_key = headline_keys(last)  # the demo rows grade their candidates only: eval/nDCG@10_candidates
    from lrt.evaluate import paired_test, per_query_ndcg

    initial = {e.qid: [c.docid for c in e.candidates] for e in trainer.eval_examples}
    trained_q = per_query_ndcg(exported, qrels)
    tests = {"vs_initial_order": paired_test(trained_q, per_query_ndcg(initial, qrels))}
    if first["step"] == 0 and trainer.first_rankings:
        tests["vs_backbone"] = paired_test(trained_q, per_query_ndcg(trainer.first_rankings, qrels))
    shown = all(t["mean_diff"] >= MIN_GAIN and t["p"] < MAX_P for t in tests.values()) and len(tests) == 2
    summary = {
        "mode": of_recipe(recipe).name,
        "heldout_queries": len(exported),
        "candidates_per_query": TASK["n_candidates"],
        "nDCG@10_initial_order": round(last[init_key], 4),
        "nDCG@10_before_finetuning": round(first[key], 4) if first["step"] == 0 else None,
        "nDCG@10_trained": round(last[key], 4),
        "nDCG@10_exported_reloaded": round(eval_ndcg(exported, qrels, kind), 4),
        "exported_ordering_equals_training_eval": same,
        "paired_tests": tests,
        "learning_to_rank_shown": shown,
        "rerank_ms_per_query": round(ms_per_query, 2),
        "train_steps": res.steps,
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "train_time_s": round(t_train, 1),
        "export_dir": str(res.final_dir),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(f"\n== lrt quickstart ({summary['mode']}): reranking {len(exported)} held-out queries ==")
    print(f"  initial candidate order   nDCG@10 = {summary['nDCG@10_initial_order']:.4f}")
    if summary["nDCG@10_before_finetuning"] is not None:
        print(f"  backbone, not fine-tuned  nDCG@10 = {summary['nDCG@10_before_finetuning']:.4f}")
    print(f"  trained reranker          nDCG@10 = {summary['nDCG@10_trained']:.4f}")
    print(f"  exported + reloaded       nDCG@10 = {summary['nDCG@10_exported_reloaded']:.4f}"
          f"  (same ordering as in-training eval: {same}; {ms_per_query:.1f} ms/query on this CPU)")
    for name, t in tests.items():
        print(f"  trained {name.replace('_', ' ')}: {t['mean_diff']:+.4f} over {t['queries']} queries, "
              f"{t['wins']} better / {t['losses']} worse, paired t = {t['t']:.2f}, p = {t['p']:.2g} "
              "(two-sided paired randomization test)")
    print(f"  {res.steps} steps, {summary['wall_time_s']} s total; model: {res.final_dir}")
    if shown:
        print(f"  The fine-tuned model ranks better than both the first stage and its backbone "
              f"(>= +{MIN_GAIN} nDCG@10, p < {MAX_P}).")
    else:
        print(f"  Not shown: the gain is below +{MIN_GAIN} nDCG@10 or not significant (p >= {MAX_P}) against the\n"
              "  initial order or the backbone. README 'Quickstart: what it shows' gives what was measured.")
    return 0 if same else 1
