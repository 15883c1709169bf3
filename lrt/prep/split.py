"""The query split of a prep job: disjoint train / held-out queries, and the held-out inputs of
`lrt rerank` and `lrt eval` written beside the training lists.

Why in prep: cutting run, queries and qrels files by hand is where train/test leakage and
mismatched query sets creep in. The split is a pure function of the job's qids and the seed
(sorted, then shuffled), so every shard of a sharded job computes the same one.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from lrt.errors import DataError
from lrt.io.atomic import atomic_write
from lrt.prep.config import SplitCfg
from lrt.prep.importers import RunSource

HELD_OUT = "held_out"


def choose_held_out(qids: list[str], cfg: SplitCfg) -> frozenset[str]:
    """The held-out qids: `held_out` queries (count or fraction) drawn with `seed`, or the qid file's."""
    n = len(qids)
    if cfg.held_out_qids is not None:
        return _read_qid_file(cfg.held_out_qids, set(qids))
    k = cfg.held_out if isinstance(cfg.held_out, int) else round(cfg.held_out * n)
    if not 1 <= k < n:
        raise DataError(f"split.held_out: {cfg.held_out} of {n} queries leaves "
                        f"{'no held-out' if k < 1 else 'no training'} query; give a count in [1, {n - 1}] or a "
                        "larger/smaller fraction")
    order = sorted(qids)
    random.Random(cfg.seed).shuffle(order)
    return frozenset(order[:k])


def _read_qid_file(path: str, known: set[str]) -> frozenset[str]:
    out: dict[str, int] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"split.held_out_qids: {path}: cannot be read ({type(e).__name__}); give a text file with "
                        "one qid per line") from None
    for n, line in enumerate(lines, 1):
        qid = line.strip()
        if not qid or qid.startswith("#"):
            continue
        if len(qid.split()) != 1:
            raise DataError(f"{path}:{n}: expected one qid per line, got {line[:80]!r}")
        if qid not in known:
            raise DataError(f"{path}:{n}: qid {qid!r} is not a query of the job's run (or has no judgements); "
                            "fix the qid or remove the line")
        if qid in out:
            raise DataError(f"{path}:{n}: qid {qid!r} repeats line {out[qid]}; list each qid once")
        out[qid] = n
    if not out:
        raise DataError(f"{path}: no qids; give one held-out qid per line")
    if len(out) == len(known):
        raise DataError(f"{path}: holds every query of the job ({len(known)}); leave some for training")
    return frozenset(out)


def write_held_out(out_dir: Path, src: RunSource, held: frozenset[str], topics: dict[str, str], depth: int) -> dict:
    """`held_out/`: run.trec (the first stage's top-`depth`, its own scores), queries.jsonl, qrels.txt
    (when judged), qids.txt; `train_qids.txt` beside it. Returns the card's `split` entry."""
    d = Path(out_dir) / HELD_OUT
    held_q = [q for q in src.qids if q in held]
    train_q = [q for q in src.qids if q not in held]
    missing = [q for q in held_q if q not in topics]
    if missing:
        raise DataError(f"split: held-out query {missing[0]!r} (and {len(missing) - 1} more) has no text in the "
                        "queries/topics file; add it, or hold out other queries")
    tag = "first_stage"
    run_lines = [f"{q} Q0 {doc} {r} {score!r} {tag}\n" for q in held_q
                 for r, (doc, score) in enumerate(src.ranked[q][:depth], 1)]
    files = {"run": f"{HELD_OUT}/run.trec", "queries": f"{HELD_OUT}/queries.jsonl", "qids": f"{HELD_OUT}/qids.txt",
             "train_qids": "train_qids.txt"}
    _text(d / "run.trec", "".join(run_lines))
    _text(d / "queries.jsonl", "".join(json.dumps({"_id": q, "text": topics[q]}) + "\n" for q in held_q))
    _text(d / "qids.txt", "".join(q + "\n" for q in held_q))
    _text(Path(out_dir) / "train_qids.txt", "".join(q + "\n" for q in train_q))
    if src.judged is not None:
        _text(d / "qrels.txt", "".join(f"{q} 0 {doc} {g}\n" for q in held_q for doc, g in src.judged[q].items()))
        files["qrels"] = f"{HELD_OUT}/qrels.txt"
    no_rel = sum(1 for q in held_q if src.judged is not None and not any(g > 0 for g in src.judged[q].values()))
    return {"train_queries": len(train_q), "held_out_queries": len(held_q), "files": files,
            "held_out_without_relevant_judgement": no_rel}


def _text(path: Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
