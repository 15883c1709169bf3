"""Collect `lrt quickstart` runs (seeds x OMP_NUM_THREADS) into one table: research/quickstart_matrix.{json,md}.

Why: issue 24 asks for the quickstart's outcome over many runs, not one. Each run directory is the
`--out` of one real `lrt quickstart` run; its figures are read from the `summary.json` that run
wrote, nothing is recomputed. Usage:

    python research/quickstart_matrix.py --out research/quickstart_matrix RUN_DIR:SEED:THREADS ...
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def row(run: Path, seed: int, threads: int) -> dict:
    s = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    t = s["paired_tests"]
    return {"seed": seed, "omp_num_threads": threads, "initial": s["nDCG@10_initial_order"],
            "backbone": s["nDCG@10_before_finetuning"], "trained": s["nDCG@10_trained"],
            "exported_reloaded": s["nDCG@10_exported_reloaded"],
            "same_ordering": s["exported_ordering_equals_training_eval"],
            "vs_initial": {k: t["vs_initial_order"][k] for k in ("mean_diff", "wins", "losses", "t", "p")},
            "vs_backbone": {k: t["vs_backbone"][k] for k in ("mean_diff", "wins", "losses", "t", "p")},
            "verdict": "ranks better than both" if s["learning_to_rank_shown"] else "Not shown",
            "steps": s["train_steps"], "wall_time_s": s["wall_time_s"], "rerank_ms_per_query": s["rerank_ms_per_query"]}


def markdown(rows: list[dict]) -> str:
    head = ("| seed | threads | initial order | backbone | trained (= exported) | vs initial order | vs backbone "
            "| verdict | wall time |\n|---|---|---|---|---|---|---|---|---|\n")

    def test(t: dict) -> str:
        return f"{t['mean_diff']:+.4f} ({t['wins']} / {t['losses']}, p = {t['p']:.2g})"

    return head + "".join(
        f"| {r['seed']} | {r['omp_num_threads']} | {r['initial']:.4f} | {r['backbone']:.4f} | {r['trained']:.4f}"
        f"{'' if r['same_ordering'] else ' (export differs!)'} | {test(r['vs_initial'])} | {test(r['vs_backbone'])} "
        f"| {r['verdict']} | {r['wall_time_s'] / 60:.1f} min |\n" for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="path stem: writes STEM.json and STEM.md")
    ap.add_argument("runs", nargs="+", help="RUN_DIR:SEED:THREADS")
    a = ap.parse_args()
    rows = []
    for spec in a.runs:
        d, seed, threads = spec.rsplit(":", 2)
        rows.append(row(Path(d), int(seed), int(threads)))
    Path(a.out + ".json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    Path(a.out + ".md").write_text(markdown(rows), encoding="utf-8")
    print(markdown(rows))


if __name__ == "__main__":
    main()
