"""Importers: fullrank JSONL, TREC run (+qrels), canonical rows -> validated `ListwiseExample`s.

Every problem names `file:line` and the fix; with `on_invalid="skip"` the row (query) is skipped
and counted instead, never dropped silently. Shards are cut by row index *before* the corpus is
read, so each Slurm task only loads the passages its own queries need (MS MARCO's 8.8M-passage
collection is streamed and filtered, not held in memory).
"""
from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from lrt.data.schema import Candidate, ListwiseExample, OnInvalid, SkipReport, load_examples
from lrt.errors import DataError

_WORDS = ("river bank loan rate water flow city history energy cell protein market price law court "
          "music film star planet heat light storm soil crop tax school health virus bone sleep").split()


@dataclass
class Imported:
    examples: list[ListwiseExample]
    report: SkipReport
    counts: dict[str, int] = field(default_factory=dict)  # importer-specific (e.g. repaired targets)


class Problems:
    """Raise a `DataError` at the first bad row, or count and skip it (`on_invalid: skip`)."""

    def __init__(self, on_invalid: OnInvalid, report: SkipReport) -> None:
        self.on_invalid = on_invalid
        self.report = report

    def __call__(self, where: str, problem: str, fix: str) -> None:
        if self.on_invalid == "error":
            raise DataError(f"{where}: {problem}; {fix} (or set source.on_invalid=skip to count and skip such rows)")
        self.report.add(where, problem)


def open_text(path: str | Path) -> TextIO:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found; check the path in the job's `source` section")
    return gzip.open(p, "rt", encoding="utf-8") if p.suffix == ".gz" else open(p, encoding="utf-8")


def in_shard(i: int, num_shards: int, shard_id: int) -> bool:
    """Rows are dealt round-robin by file position: stable, balanced, independent of content."""
    return i % num_shards == shard_id


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, object or DataError) for every non-blank line; a bad last line hints truncation.

    A `.json` file holding one array is read too (castorini's loader expects that form): positions
    are then array items, not lines.
    """
    if str(path).removesuffix(".gz").endswith(".json"):
        with open_text(path) as fh:
            try:
                items = json.load(fh)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg}); fix the file or give JSONL") from None
        if not isinstance(items, list):
            raise DataError(f"{path}: expected a JSON array of rows (or a .jsonl file)")
        yield from enumerate(items, 1)
        return
    with open_text(path) as fh:  # streamed, one line of lookahead to recognise the last line
        prev: tuple[int, str] | None = None
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if prev is not None:
                yield _json_line(path, *prev, last=False)
            prev = (n, line)
        if prev is not None:
            yield _json_line(path, *prev, last=True)


def _json_line(path: str | Path, n: int, line: str, last: bool) -> tuple[int, Any]:
    try:
        return n, json.loads(line)
    except json.JSONDecodeError as e:
        cut = " (the last line looks truncated: was the file fully written?)" if last else ""
        return n, DataError(f"{path}:{n}: malformed JSON ({e.msg}){cut}")


def iter_fullrank_rows(path: str | Path) -> Iterator[tuple[str, int, dict]]:
    """Validated `{qid, initial_list, final_list}` rows; raises `DataError` on the first bad line."""
    yield from _fullrank_rows(path, Problems("error", SkipReport()))


def _fullrank_rows(path: str | Path, problems: Problems, keep=lambda k: True) -> Iterator[tuple[str, int, dict]]:
    """Rows whose 0-based position `k` passes `keep` (shard/limit), validated; bad ones go to `problems`."""
    for k, (n, row) in enumerate(iter_jsonl(path)):
        if not keep(k):
            continue
        problems.report.total += 1
        where = f"{path}:{n}"
        if isinstance(row, DataError):
            problems(where, str(row).split(": ", 1)[1], "fix or delete the line")
            continue
        init, final = (row.get("initial_list"), row.get("final_list")) if isinstance(row, dict) else (None, None)
        if not isinstance(row, dict) or not isinstance(row.get("qid"), (str, int)):
            problems(where, "row needs a `qid`", 'each line is {"qid", "initial_list", "final_list"}')
        elif not isinstance(init, list) or not init or not isinstance(final, list):
            problems(where, "`initial_list` and `final_list` must be non-empty lists of docids", "fix the row")
        elif len(set(map(str, init))) != len(init) or sorted(map(str, init)) != sorted(map(str, final)):
            problems(where, "`final_list` is not a permutation of `initial_list` (or a docid repeats)",
                     "regenerate the row: every candidate must be ranked exactly once")
        else:
            yield where, n, {"qid": str(row["qid"]), "initial_list": [str(d) for d in init],
                             "final_list": [str(d) for d in final]}


def synthetic_text(key: str, words: int = 24) -> str:
    """Deterministic placeholder text (seeded by the id) for demos on id-only data such as fullrank's."""
    rng = random.Random(f"lrt-synthetic:{key}")
    return f"passage {key}: " + " ".join(rng.choices(_WORDS, k=words))


def read_passages(path: str | Path, keep: set[str]) -> dict[str, tuple[str, str | None, str]]:
    """Stream a corpus (`docid\\ttext`, `docid\\ttitle\\ttext` or JSONL) keeping only `keep`.

    Returns docid -> (text, title, "file:line") so a later problem can point at the corpus line.
    """
    out: dict[str, tuple[str, str | None, str]] = {}
    as_json = str(path).removesuffix(".gz").endswith((".jsonl", ".json"))
    with open_text(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if as_json:
                try:
                    obj = json.loads(line)
                    docid = str(next(obj[k] for k in ("docid", "_id", "id") if k in obj))
                    text, title = next(obj[k] for k in ("text", "contents") if k in obj), obj.get("title")
                except (json.JSONDecodeError, StopIteration, TypeError, AttributeError):
                    raise DataError(f"{path}:{n}: expected a JSON object with `docid` (or `_id`/`id`) and `text` "
                                    "(or `contents`); fix or delete the line") from None
            else:
                cols = line.rstrip("\r\n").split("\t")
                if len(cols) not in (2, 3) or not cols[0].strip():
                    raise DataError(f"{path}:{n}: expected `docid<TAB>text` or `docid<TAB>title<TAB>text`, "
                                    f"got {len(cols)} field(s); fix or delete the line")
                docid, text, title = cols[0].strip(), cols[-1], (cols[1] if len(cols) == 3 else None)
            if docid in keep and docid not in out:
                out[docid] = (text if isinstance(text, str) else "", title or None, f"{path}:{n}")
    return out


def _candidates(docids: list[str], texts: dict | None, locate: Callable[[str], str], problems: Problems,
                corpus: str | None) -> list[Candidate] | None:
    """Join docids with passage texts (or invent them when `texts` is None); None if the row is bad."""
    cands = []
    for d in docids:
        if texts is None:
            cands.append(Candidate(d, synthetic_text(d)))
            continue
        hit = texts.get(d)
        if hit is None:
            problems(locate(d), f"docid {d!r} is not in the corpus {corpus}",
                     "add the passage to the corpus (or fix the docid)")
            return None
        if not hit[0].strip():
            problems(hit[2], f"docid {d!r} has empty text", "fill in the passage text or remove the candidate")
            return None
        cands.append(Candidate(d, hit[0], hit[1]))
    return cands


def _inputs(corpus: str | None, queries: str | None, need: set[str], synthetic: bool, qkey: str):
    """Passages for `need` and query texts; a missing path is an error unless `synthetic` (demo)."""
    from lrt.io.trec import read_topics

    for value, name in ((corpus, "source.corpus"), (queries, qkey)):
        if value is None and not synthetic:
            raise DataError(f"{name} is required (give the path, or set source.synthetic_text=true for a "
                            "demo with invented texts)")
    texts = read_passages(corpus, need) if corpus is not None else None
    return texts, (read_topics(queries) if queries is not None else None)


def import_fullrank(path: str, *, corpus: str | None, queries: str | None, synthetic: bool = False,
                    on_invalid: OnInvalid = "error", limit: int | None = None, num_shards: int = 1,
                    shard_id: int = 0) -> Imported:
    """fullrank `{qid, initial_list, final_list}` joined with passages and queries.

    Candidates are shown in `initial_list` (first-stage) order; the ranking is `final_list`.
    `synthetic=True` invents deterministic texts for what has no file (demo only).
    """
    report = SkipReport()
    problems = Problems(on_invalid, report)
    keep = lambda k: (limit is None or k < limit) and in_shard(k, num_shards, shard_id)  # noqa: E731
    rows = list(_fullrank_rows(path, problems, keep))
    texts, topics = _inputs(corpus, queries, {d for *_, r in rows for d in r["initial_list"]}, synthetic,
                            "source.queries")
    out = []
    for where, _, row in rows:
        query = f"synthetic query {row['qid']}" if topics is None else topics.get(row["qid"])
        if query is None:
            problems(where, f"query {row['qid']!r} is not in {queries}", "add the query text to the queries file")
            continue
        cands = _candidates(row["initial_list"], texts, lambda d: where, problems, corpus)
        if cands is not None:
            out.append(ListwiseExample(row["qid"], query, cands, row["final_list"]))
    return Imported(out, report)


def _line_of(path: str, qid: str, docid: str | None = None) -> str:
    """Locate a run line lazily (only on error): `read_run` returns parsed rows without positions."""
    with open_text(path) as fh:
        for n, line in enumerate(fh, 1):
            cols = line.split()
            if len(cols) >= 3 and cols[0] == qid and (docid is None or cols[2] == docid):
                return f"{path}:{n}"
    return str(path)


@dataclass
class RunSource:
    """A first-stage run with its (optional) qrels and the queries a job uses, in run order: read once,
    shared by the query split (which needs every qid before sharding) and the importer."""
    run: str
    ranked: dict[str, list[tuple[str, float]]]
    judged: dict[str, dict[str, int]] | None
    qids: list[str]
    unjudged: int = 0  # queries of the run left out because the qrels do not judge them (only_judged)


def read_run_source(run: str, qrels: str | None, *, only_judged: bool = False, limit: int | None = None) -> RunSource:
    """The run's queries (first `limit`); with `only_judged` (a BEIR folder, whose qrels file is one
    split of its queries) those without judgements are left out and counted instead of failing."""
    from lrt.io.trec import read_qrels, read_run

    ranked = read_run(run)
    judged = read_qrels(qrels) if qrels else None
    qids = list(ranked)
    unjudged = 0
    if only_judged and judged is not None:
        kept = [q for q in qids if q in judged]
        unjudged, qids = len(qids) - len(kept), kept
        if not qids:
            raise DataError(f"{run}: none of its {len(ranked)} queries is judged in {qrels}; give the qrels of "
                            "the same queries (source.qrels) or the run of the queries the qrels judge")
    return RunSource(run, ranked, judged, qids[:limit] if limit is not None else qids, unjudged)


def import_trec(run: str, *, topics: str | None, corpus: str | None, qrels: str | None = None, depth: int = 100,
                synthetic: bool = False, on_invalid: OnInvalid = "error", limit: int | None = None,
                num_shards: int = 1, shard_id: int = 0, source: RunSource | None = None,
                exclude: frozenset[str] = frozenset(), topics_key: str = "source.topics") -> Imported:
    """A first-stage run as candidate lists; with qrels, ranked by grade (ties: first-stage order),
    and each row keeps the query's full qrels (`qrels` field) for trec_eval-exact evaluation.

    Without qrels the ranking is the first-stage order: a placeholder for a teacher to replace.
    `exclude` (held-out queries of a split) is removed before sharding, so shards stay balanced.
    """
    report = SkipReport()
    problems = Problems(on_invalid, report)
    src = source or read_run_source(run, qrels, limit=limit)
    ranked, judged = src.ranked, src.judged
    mine = [q for i, q in enumerate(q for q in src.qids if q not in exclude) if in_shard(i, num_shards, shard_id)]
    report.total = len(mine)
    texts, tops = _inputs(corpus, topics, {d for q in mine for d, _ in ranked[q][:depth]}, synthetic, topics_key)
    out = []
    for q in mine:
        docids = [d for d, _ in ranked[q][:depth]]
        if tops is not None and q not in tops:
            problems(_line_of(run, q), f"query {q!r} is not in the topics file {topics}", "add its text to the topics")
            continue
        if judged is not None and q not in judged:
            problems(_line_of(run, q), f"query {q!r} has no judgements in {qrels}",
                     "drop the query from the run, or label it with a teacher instead of qrels")
            continue
        cands = _candidates(docids, texts, lambda d: _line_of(run, q, d), problems, corpus)
        if cands is None:
            continue
        query = tops[q] if tops is not None else f"synthetic query {q}"
        if judged is None:
            out.append(ListwiseExample(q, query, cands, list(docids)))
            continue
        grades = [float(judged[q].get(d, 0)) for d in docids]
        ranking = [docids[i] for i in sorted(range(len(docids)), key=lambda i: (-grades[i], i))]
        # every judged document, retrieved or not: evaluation needs the ideal DCG over all of them
        out.append(ListwiseExample(q, query, cands, ranking, grades, qrels=dict(judged[q])))
    counts = {"unjudged_queries_left_out": src.unjudged} if src.unjudged else {}
    return Imported(out, report, counts)


def beir_paths(folder: str, qrels: str | None) -> tuple[str, str, str]:
    """(queries, corpus, qrels) files of a BEIR folder; one error naming what is missing."""
    from lrt.io.trec import beir_file

    p = Path(folder)
    if not p.is_dir():
        raise DataError(f"source.path: {folder}: not a folder; give a BEIR folder (queries.jsonl, corpus.jsonl, "
                        "qrels/test.tsv)")
    found = [str(beir_file(p, k)) for k in ("queries", "corpus")]
    if qrels is None:
        tsvs = sorted(x.name for x in (p / "qrels").glob("*.tsv"))
        if not (p / "qrels" / "test.tsv").is_file():
            raise DataError(f"source.qrels: {p} has no qrels/test.tsv (found: {', '.join(tsvs) or 'no qrels/*.tsv'}); "
                            f"give the qrels file to label with, e.g. source.qrels={p / 'qrels' / (tsvs or ['train.tsv'])[0]}")
        qrels = str(p / "qrels" / "test.tsv")
    return found[0], found[1], qrels


def import_beir(folder: str, *, run: str, qrels: str | None = None, depth: int = 100, exclude: frozenset[str] = frozenset(),
                source: RunSource | None = None, on_invalid: OnInvalid = "error", limit: int | None = None,
                num_shards: int = 1, shard_id: int = 0) -> Imported:
    """A BEIR folder + a first-stage run: lists of the run's top-`depth` graded by the folder's qrels."""
    queries, corpus, qrels = beir_paths(folder, qrels)
    src = source or read_run_source(run, qrels, only_judged=True, limit=limit)
    return import_trec(run, topics=queries, corpus=corpus, qrels=qrels, depth=depth, on_invalid=on_invalid,
                       num_shards=num_shards, shard_id=shard_id, source=src, exclude=exclude,
                       topics_key="source.path (queries.jsonl)")


def import_canonical(path: str, *, on_invalid: OnInvalid = "error", limit: int | None = None,
                     num_shards: int = 1, shard_id: int = 0) -> Imported:
    """Canonical rows (e.g. to relabel an existing dataset with another teacher)."""
    examples, report = load_examples(path, on_invalid=on_invalid, limit=limit)
    return Imported([e for i, e in enumerate(examples) if in_shard(i, num_shards, shard_id)], report)
