"""Shard files, cards and merge: a killed job never leaves output that looks complete.

Layout of `output.dir`:
    shards/part-00000-of-00004.parquet   canonical listwise rows (lrt.data.schema)
    calls/part-00000-of-00004.parquet    one row per teacher window call (audit / window baselines)
    cards/part-00000-of-00004.json       provenance + counts; written LAST: its presence = shard done
    cache/part-00000-of-00004.sqlite     teacher answers (resume without paying twice)
    locks/part-00000-of-00004.lock       held (flock) by the process working on the shard: pid, host
    data.parquet, card.json              after `merge` (or automatically with a single shard)
Every file is written to a temp file in the same directory, fsynced and `os.replace`d.
"""
from __future__ import annotations

from lrt.io.atomic import atomic_write  # noqa: F401  (re-exported for lrt.prep users)
from lrt.io.lock import DirLock

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from lrt.data.schema import ListwiseExample
from lrt.errors import LrtError
from lrt.prep.windows import WindowCall


def part_name(shard_id: int, num_shards: int) -> str:
    return f"part-{shard_id:05d}-of-{num_shards:05d}"


def write_json(path: Path, obj: Any) -> Path:
    return atomic_write(path, lambda fh: fh.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def write_parquet(path: Path, rows: list[dict], schema: Any = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=schema) if rows or schema is None else schema.empty_table()
    return atomic_write(path, lambda fh: pq.write_table(table, fh))


def call_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("qid", pa.string()), ("step", pa.int32()), ("pass_index", pa.int32()), ("start", pa.int32()),
                      ("end", pa.int32()), ("docids", pa.list_(pa.string())), ("raw", pa.string()),
                      ("order", pa.list_(pa.int32())), ("duplicates", pa.int32()), ("out_of_range", pa.int32()),
                      ("missing", pa.int32()), ("valid", pa.bool_()), ("cached", pa.bool_()), ("error", pa.string())])


def example_schema() -> Any:
    """One fixed schema for every shard, so shards always concatenate (title/relevance may be null)."""
    import pyarrow as pa

    cand = pa.struct([("docid", pa.string()), ("text", pa.string()), ("title", pa.string())])
    return pa.schema([("qid", pa.string()), ("query", pa.string()), ("candidates", pa.list_(cand)),
                      ("ranking", pa.list_(pa.string())), ("relevance", pa.list_(pa.float64())),
                      ("qrels", pa.list_(pa.struct([("docid", pa.string()), ("relevance", pa.int64())]))),
                      ("teacher_scores", pa.list_(pa.float64()))])


def write_examples(path: Path, examples: Sequence[ListwiseExample]) -> Path:
    rows = [{"qid": e.qid, "query": e.query, "ranking": e.ranking, "relevance": e.relevance,
             "qrels": None if e.qrels is None else [{"docid": d, "relevance": g} for d, g in e.qrels.items()],
             "teacher_scores": e.teacher_scores,
             "candidates": [{"docid": c.docid, "text": c.text, "title": c.title} for c in e.candidates]}
            for e in examples]
    return write_parquet(path, rows, example_schema())


def write_calls(path: Path, calls: Sequence[WindowCall]) -> Path:
    return write_parquet(path, [vars(c) for c in calls], call_schema())  # shallow: asdict deep-copies


def clean_stale_temps(out_dir: Path, name: str | None = None) -> int:
    """Remove temp files a killed run left behind (they never carry a final name).

    With `name`, only that shard's (under its lock): other shards may be writing theirs right now.
    """
    n = 0
    for p in out_dir.glob(f"*/.{name}.*.tmp" if name else "*/.*.tmp"):
        p.unlink(missing_ok=True)
        n += 1
    return n


class ShardLock(DirLock):
    """An exclusive `flock` on `locks/<shard>.lock` while one process works on a shard.

    A second `lrt prep` on the same shard would pay for the same windows and could delete the first
    one's temp files, so it is refused, naming the holder (pid, host, start time) written into the
    lock file. The kernel drops the lock when the holder exits or is killed, so a crashed run
    never leaves a stale lock behind (`lrt.io.lock`).
    """

    def __init__(self, out_dir: Path, name: str) -> None:
        self.name = name
        path = Path(out_dir) / "locks" / f"{name}.lock"
        super().__init__(path, lambda holder: (
            f"{path.parent.parent}: shard {name} is already being prepared by {holder}; wait for that run "
            "to finish (or stop it) instead of starting a second one on the same output.dir: both would pay "
            "for the same teacher calls"), what="shard lock")


def read_card(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return None  # cannot happen with atomic writes; treat as not done


def _sum_counts(cards: list[dict]) -> dict:
    total: Counter = Counter()
    for c in cards:
        for k, v in c["counts"].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                total[k] += v
    return dict(total)


def merge(out_dir: str | Path) -> Path:
    """Concatenate complete shards into `data.parquet` + `card.json`; refuse gaps or mixed jobs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    cards = {p.stem: read_card(p) for p in sorted((out / "cards").glob("part-*.json"))}
    cards = {k: v for k, v in cards.items() if v is not None}
    if not cards:
        raise LrtError(f"{out}: no finished shards (cards/part-*.json); run `lrt prep JOB.yaml` first")
    ks = {c["shard"]["num_shards"] for c in cards.values()}
    prints = {c["fingerprint"] for c in cards.values()}
    if len(ks) != 1 or len(prints) != 1:
        raise LrtError(f"{out}: shards come from different jobs or shard counts ({sorted(ks)}); "
                       "merge only the shards of one run (use a fresh output.dir per job)")
    k = ks.pop()
    missing = [i for i in range(k) if part_name(i, k) not in cards]
    if missing:
        raise LrtError(f"{out}: shard(s) {missing[:20]} of {k} are not finished; run them "
                       f"(`--num-shards {k} --shard-id I`) before merging")
    ordered = [cards[part_name(i, k)] for i in range(k)]
    tables = [pq.read_table(out / "shards" / f"{part_name(i, k)}.parquet") for i in range(k)]
    table = pa.concat_tables(tables)
    qids = table.column("qid").to_pylist()
    if len(set(qids)) != len(qids):
        dup = sorted({q for q in qids if qids.count(q) > 1})[:5]
        raise LrtError(f"{out}: duplicate qids {dup} across shards; the input has repeated queries")
    atomic_write(out / "data.parquet", lambda fh: pq.write_table(table, fh))
    card = {key: ordered[0][key] for key in ("job", "fingerprint", "provenance", "lrt_version")}
    if "split" in ordered[0]:  # written by shard 0: the held-out inputs (lrt.prep.split)
        card["split"] = ordered[0]["split"]
    card.update(shards=k, rows=len(qids), counts=_sum_counts(ordered),
                failed_queries=[q for c in ordered for q in c.get("failed_queries", [])],
                files={"data": "data.parquet", "calls": [f for f in (f"calls/{part_name(i, k)}.parquet" for i in range(k))
                                                         if (out / f).is_file()]})  # only what was written (call_log)
    write_json(out / "card.json", card)
    return out / "data.parquet"
