"""Readers and writers for TREC runs, qrels, topics and passage corpora.

Readers fail with a `DataError` naming `file:line` and the fix: a silently skipped line shifts
evaluation numbers with no visible symptom. Runs come back in trec_eval order (score desc, ties
by docid desc) and `write_run` emits unique decreasing scores, so tie rules never matter.
"""
from __future__ import annotations

from lrt.io.atomic import atomic_write

import gzip
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from lrt.errors import DataError

Run = dict[str, list[tuple[str, float]]]
Qrels = dict[str, dict[str, int]]
PathLike = str | os.PathLike[str]


def _open(path: PathLike) -> TextIO:
    """Open text (transparently gunzipping `.gz`) or raise a DataError that names the path."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: {not_a_file(p)}; give a regular file (check the path)")
    # utf-8-sig: a BOM written by Windows tools would otherwise glue itself to the first qid
    return gzip.open(p, "rt", encoding="utf-8-sig") if p.suffix == ".gz" else open(p, encoding="utf-8-sig")


def not_a_file(p: Path) -> str:
    """Why `p` is not a readable regular file, in words (a FIFO would block the reader forever)."""
    if p.is_symlink() and not p.exists():
        return f"a dangling symlink (to {os.readlink(p)})"
    if not p.exists():
        return "file not found"
    if p.is_dir():
        return "a directory, not a file"
    return "not a regular file (a FIFO, socket or device), which lrt does not read"


def _lines(path: PathLike, comments: bool = False) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line without newline), skipping blank (and '#') lines."""
    with _open(path) as f:
        lineno = 0
        try:
            for lineno, raw in enumerate(f, start=1):  # noqa: B007 - lineno used on error
                line = raw.rstrip("\r\n")
                if line.strip() and not (comments and line.lstrip().startswith("#")):
                    yield lineno, line
        except UnicodeDecodeError as e:  # decoding is chunked, so the line is approximate
            raise DataError(f"{path}: not valid UTF-8 near line {lineno + 1} ({e.reason}); "
                            "re-encode the file as UTF-8") from None


def trec_order(pairs: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """Sort like trec_eval: score descending, ties by docid descending (byte-wise strcmp).

    Python str comparison is by code point, which equals UTF-8 byte order, i.e. strcmp.
    """
    return sorted(pairs, key=lambda p: (p[1], p[0]), reverse=True)


def read_run(path: PathLike) -> Run:
    """Read a TREC run `qid Q0 docid rank score tag` into per-query lists in trec_eval order.

    The rank column is ignored, exactly as trec_eval ignores it: only score (then docid)
    decides the order, so a file whose ranks disagree with its scores is evaluated by scores.
    """
    run: dict[str, dict[str, tuple[float, int]]] = {}  # qid -> docid -> (score, line)
    for lineno, line in _lines(path, comments=True):
        cols = line.split()
        if len(cols) != 6:
            raise DataError(f"{path}:{lineno}: expected 6 columns 'qid Q0 docid rank score tag', "
                            f"got {len(cols)}: {line[:80]!r}; fix or remove this line")
        qid, _, docid, _, score_s, _ = cols
        try:
            score = float(score_s)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise DataError(f"{path}:{lineno}: score {score_s!r} is not a finite number; "
                            "column 5 must be the numeric score")
        docs = run.setdefault(qid, {})
        if docid in docs:
            raise DataError(f"{path}:{lineno}: duplicate docid {docid!r} for query {qid!r} "
                            f"(first at line {docs[docid][1]}); keep one line per (qid, docid)")
        docs[docid] = (score, lineno)
    if not run:
        raise DataError(f"{path}: run is empty (no 'qid Q0 docid rank score tag' lines); "
                        "check that the reranking step wrote its output")
    return {qid: trec_order([(d, s) for d, (s, _) in docs.items()]) for qid, docs in run.items()}


def write_run(path: PathLike, rankings: Mapping[str, Sequence[str]], tag: str) -> None:
    """Write ranked docids as a TREC run with ranks 1..n and scores n..1 (unique, decreasing).

    Unique scores mean the same order to trec_eval, every ir_measures provider and ranx. Written
    to a temp file then `os.replace`d, so readers never see a half-written run.
    """
    if not isinstance(tag, str) or tag.split() != [tag]:
        raise DataError(f"{path}: run tag {tag!r} must be non-empty and contain no whitespace")
    out: list[str] = []
    for qid, docids in rankings.items():
        bad = [t for t in (qid, *docids) if not isinstance(t, str) or t.split() != [t]]
        if bad:
            raise DataError(f"{path}: query {qid!r}: id {bad[0]!r} must be a non-empty string "
                            "without whitespace (TREC files are whitespace-separated)")
        if len(set(docids)) != len(docids):
            raise DataError(f"{path}: ranking for query {qid!r} repeats a docid; "
                            "a ranking must list each document once")
        out.extend(f"{qid} Q0 {d} {r} {float(len(docids) - r + 1):.1f} {tag}\n"
                   for r, d in enumerate(docids, start=1))
    atomic_write(path, lambda fh: fh.write("".join(out).encode("utf-8")))


def read_qrels(path: PathLike) -> Qrels:
    """Read TREC qrels `qid iter docid rel` (iter ignored; rel an integer, as in trec_eval), or BEIR's
    `qrels/*.tsv` (`query-id<TAB>corpus-id<TAB>score`, header line optional); a BEIR folder reads
    its `qrels/test.tsv`."""
    path = beir_file(path, "qrels")
    qrels: Qrels = {}
    width = None
    for lineno, line in _lines(path, comments=True):
        cols = line.split()
        if width is None and len(cols) == 3 and not _is_int(cols[2]):  # BEIR header: query-id corpus-id score
            width = 3
            continue
        width = width or len(cols)
        if len(cols) != width or width not in (3, 4):
            raise DataError(f"{path}:{lineno}: expected 4 columns 'qid iter docid rel' (TREC) or 3 "
                            f"'query-id corpus-id score' (BEIR), got {len(cols)}: {line[:80]!r}")
        qid, docid, rel_s = (cols[0], cols[2], cols[3]) if width == 4 else cols
        try:
            rel = int(rel_s)
        except ValueError:
            raise DataError(f"{path}:{lineno}: relevance {rel_s!r} is not an integer; "
                            "qrels grades must be integers (e.g. 0-3)") from None
        docs = qrels.setdefault(qid, {})
        if docid in docs:
            raise DataError(f"{path}:{lineno}: duplicate judgement for query {qid!r} doc "
                            f"{docid!r}; keep one line per (qid, docid)")
        docs[docid] = rel
    if not qrels:
        raise DataError(f"{path}: qrels file is empty; expected 'qid iter docid rel' lines")
    return qrels


def _is_json(path: PathLike) -> bool:
    """JSON by suffix (.json/.jsonl, optionally .gz), else by a first line starting with '{'."""
    suffix = Path(str(path).removesuffix(".gz")).suffix
    if suffix in (".json", ".jsonl", ".tsv"):
        return suffix != ".tsv"
    return next((line for _, line in _lines(path)), "").lstrip().startswith("{")


def _unique_pairs(path: PathLike, pairs: list[tuple[str, object]]) -> dict[str, object]:
    """json object_pairs_hook: plain json.load would silently keep the last duplicate qid."""
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = next(k for i, k in enumerate(keys) if k in keys[:i])
        raise DataError(f"{path}: duplicate key {dup!r} in JSON object; keep one entry per qid")
    return dict(pairs)


def read_topics(path: PathLike) -> dict[str, str]:
    """Read query texts: a JSON object {qid: text | {"title"|"text"|"query": text}} or `qid\\ttext`.

    The shared DL19/DL20 files are `{qid: {"title": text}}`; MS MARCO `queries.tsv` is TSV.
    """
    path = beir_file(path, "queries")
    topics: dict[str, str] = {}
    if Path(str(path).removesuffix(".gz")).suffix == ".jsonl":  # BEIR queries.jsonl: one {"_id", "text"} per line
        for last, lineno, line in _with_last(_lines(path)):
            obj = _json_line(path, lineno, line, last, '{"_id": "q1", "text": "..."}')
            qid = next((obj[k] for k in ("_id", "qid", "query_id", "id") if k in obj), None) \
                if isinstance(obj, dict) else None
            text = next((obj[k] for k in ("text", "query", "title") if k in obj), None) if qid is not None else None
            if qid is None or not isinstance(text, str) or not text.strip():
                raise DataError(f"{path}:{lineno}: need a query id ('_id', 'qid' or 'id') and a non-empty "
                                "string 'text'")
            if str(qid) in topics:
                raise DataError(f"{path}:{lineno}: duplicate query id {qid!r}; keep one line per qid")
            topics[str(qid)] = text.strip()
    elif _is_json(path):
        with _open(path) as f:
            try:
                obj = json.load(f, object_pairs_hook=lambda p: _unique_pairs(path, p))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); expected "
                                '{"qid": "text", ...}') from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}: expected a JSON object {{qid: text}}, "
                            f"got {type(obj).__name__}")
        for qid, val in obj.items():
            if isinstance(val, dict):
                val = next((val[k] for k in ("title", "text", "query") if k in val), None)
            if not isinstance(val, str) or not val.strip():
                raise DataError(f"{path}: query {qid!r} has no text; give a non-empty string "
                                'or {"title": "..."}')
            topics[qid] = val.strip()
    else:
        for lineno, line in _lines(path):
            qid, sep, text = line.partition("\t")
            if not sep or not qid.strip():
                raise DataError(f"{path}:{lineno}: expected 'qid<TAB>text': {line[:80]!r}")
            if not text.strip():
                raise DataError(f"{path}:{lineno}: query {qid!r} has empty text; remove or fill it")
            if qid in topics:
                raise DataError(f"{path}:{lineno}: duplicate query id {qid!r}; "
                                "keep one line per qid")
            topics[qid] = text.strip()
    if not topics:
        raise DataError(f"{path}: no topics found; expected JSON {{qid: text}} or 'qid<TAB>text'")
    return topics


def _with_last(items: Iterator[tuple[int, str]]) -> Iterator[tuple[bool, int, str]]:
    """One-item lookahead so a bad *last* JSONL line can be reported as a truncated write."""
    prev = next(items, None)
    for item in items:
        yield (False, *prev)  # type: ignore[misc]
        prev = item
    if prev is not None:
        yield (True, *prev)


def _json_line(path: PathLike, lineno: int, line: str, last: bool, example: str) -> Any:
    """One JSONL line, or one error naming file:line (a bad *last* line is likely a truncated write)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        hint = " (truncated last line? the file was probably not fully written)" if last else ""
        raise DataError(f"{path}:{lineno}: invalid JSON{hint}: {e.msg}; each line must be one JSON object "
                        f"such as {example}") from None


def _parse_jsonl_doc(path: PathLike, lineno: int, line: str, last: bool) -> tuple[str, dict]:
    obj = _json_line(path, lineno, line, last, '{"_id": "d1", "text": "..."}')
    if isinstance(obj, dict):
        doc_id = next((obj[k] for k in ("docid", "_id", "id") if k in obj), None)
        text = next((obj[k] for k in ("text", "contents") if k in obj), None)
        if doc_id is not None and isinstance(text, str):
            return str(doc_id), {"text": text, "title": obj.get("title") or None}
    raise DataError(f"{path}:{lineno}: need an id ('docid', '_id' or 'id') and a string "
                    "'text' or 'contents'")


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


BEIR = {"corpus": ("corpus.jsonl", "corpus.jsonl.gz"), "queries": ("queries.jsonl", "queries.jsonl.gz"),
        "qrels": ("qrels/test.tsv", "qrels/dev.tsv", "qrels/train.tsv")}


def beir_file(path: PathLike, kind: str) -> PathLike:
    """A BEIR dataset folder (corpus.jsonl, queries.jsonl, qrels/*.tsv) -> its `kind` file; files pass through."""
    p = Path(path)
    if not p.is_dir():
        return path
    for name in BEIR[kind]:
        if (p / name).is_file():
            return p / name
    raise DataError(f"{p}: a folder without {' or '.join(BEIR[kind])}; give the {kind} file itself, "
                    "or a BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv)")


def read_corpus(path: PathLike) -> dict[str, dict]:
    """Read passages {docid: {"text": str, "title": str | None}} from TSV or JSONL (.gz ok).

    Lines are parsed one at a time (no whole-file buffering) so MS MARCO-sized files fit.
    """
    return read_corpus_subset(path, None)


def read_corpus_subset(path: PathLike, needed: set[str] | None) -> dict[str, dict]:
    """Stream a corpus (MS MARCO `collection.tsv`, BEIR `corpus.jsonl` or its folder, .gz ok) keeping
    only the `needed` docids (all when None): a rerank of a run's top-k holds k x queries passages,
    not the 8.8M of MS MARCO. Every line is still checked, with `file:line` on errors; duplicates are
    reported among the kept docids (the ones that could change a result)."""
    path = beir_file(path, "corpus")
    as_json = _is_json(path)
    corpus: dict[str, dict] = {}
    lines = 0
    for last, lineno, line in _with_last(_lines(path)):
        lines += 1
        cols = [] if as_json else line.split("\t")  # TSV: docid [title] text
        if as_json:
            doc_id, doc = _parse_jsonl_doc(path, lineno, line, last)
        elif len(cols) in (2, 3) and cols[0].strip():
            doc_id = cols[0].strip()
            if needed is not None and doc_id not in needed:
                continue
            doc = {"text": cols[-1], "title": (cols[1] if len(cols) == 3 else "") or None}
        else:
            raise DataError(f"{path}:{lineno}: expected 'docid<TAB>text' or "
                            f"'docid<TAB>title<TAB>text', got {len(cols)} field(s)")
        if needed is not None and doc_id not in needed:
            continue
        if doc_id in corpus:
            raise DataError(f"{path}:{lineno}: duplicate docid {doc_id!r}; keep one row per docid")
        corpus[doc_id] = doc
    if not lines:
        raise DataError(f"{path}: corpus is empty; expected TSV or JSONL passages")
    return corpus
