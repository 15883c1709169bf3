"""The canonical listwise example and its loaders.

One row = one query with its candidates in first-stage (display) order and a teacher ranking that is
a complete permutation of them. Every loader validates every row and either raises one `DataError`
naming `file:line` or, with `on_invalid="skip"`, counts what it skipped: nothing is dropped silently.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from lrt.errors import DataError
from lrt.io.atomic import atomic_write

OnInvalid = Literal["error", "skip"]
CANDIDATE_KEYS = frozenset({"docid", "text", "title"})
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class Candidate:
    docid: str
    text: str
    title: str | None = None


@dataclass
class ListwiseExample:
    """A query, its candidates in display order, and the teacher permutation (best first)."""

    qid: str
    query: str
    candidates: list[Candidate]
    ranking: list[str]
    relevance: list[float] | None = None  # aligned with `candidates`
    # every judged document of the query (TREC qrels, incl. ones not among the candidates):
    # in-training evaluation then gives trec_eval's nDCG, not one rebuilt from the candidates
    qrels: dict[str, int] | None = None
    # the teacher's score of each candidate (aligned with `candidates`; higher = better): a
    # cross-encoder's logit, an LLM teacher's first-token identifier log-prob. Score distillation
    # (margin_mse, kl_distill) trains on it; ranking losses use `ranking` only.
    teacher_scores: list[float] | None = None

    def ranks(self) -> list[int]:
        """1-based teacher rank of each candidate, in display order (integer labels, never logits)."""
        pos = {d: i + 1 for i, d in enumerate(self.ranking)}
        return [pos[c.docid] for c in self.candidates]

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "qid": self.qid,
            "query": self.query,
            "candidates": [
                {"docid": c.docid, "text": c.text, **({"title": c.title} if c.title is not None else {})}
                for c in self.candidates
            ],
            "ranking": list(self.ranking),
        }
        if self.relevance is not None:
            row["relevance"] = list(self.relevance)
        if self.qrels is not None:
            row["qrels"] = dict(self.qrels)
        if self.teacher_scores is not None:
            row["teacher_scores"] = list(self.teacher_scores)
        return row


@dataclass
class SkipReport:
    """What a loader skipped under `on_invalid: skip`, with the first few reasons for the log."""

    total: int = 0
    skipped: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, where: str, problem: str) -> None:
        self.skipped += 1
        for kind in dict.fromkeys(problem_kind(p) for p in problem.split("; ")):
            self.reasons[kind] += 1  # rows per kind of problem (a row may have several kinds)
        if len(self.examples) < 10:
            self.examples.append(f"{where}: {problem}")

    def summary(self) -> str:
        """One line per kind of problem, most frequent first, then the first example rows."""
        if not self.skipped:
            return f"{self.total} rows, none skipped"
        kinds = "".join(f"\n  {n} x {k}" for k, n in self.reasons.most_common())
        head = "".join(f"\n  e.g. {e}" for e in self.examples[:3])
        return f"{self.total} rows, {self.skipped} skipped, by kind:{kinds}{head}"


def problem_kind(problem: str) -> str:
    """A problem with its specifics (positions, docids, values) blanked, so messages group by kind:
    `candidates[3] (docid d7) has empty or missing `text`` -> `candidates[i] has empty or missing `text``."""
    import re

    k = problem.split(":")[0] if not problem.startswith("`") else problem
    k = re.sub(r"\s*\(docid [^)]*\)", "", k)
    k = re.sub(r"\[\d+\]", "[i]", k)
    k = re.sub(r"\[(?!i\])[^\]`]*\]", "[...]", k)
    k = re.sub(r"'[^']*'|\"[^\"]*\"", "'...'", k)
    k = re.sub(r"\(got [^)]*\)|\(first at [^)]*\)|\(NaN[^)]*\)", "", k)
    k = re.sub(r"\b\d+\b", "N", k)
    return re.sub(r"\s+", " ", k).strip()


def _str_field(row: dict, key: str, problems: list[str]) -> str:
    val = row.get(key)
    if isinstance(val, (int, float)) and not isinstance(val, bool) and key == "qid":
        val = str(val)
    if not isinstance(val, str):
        problems.append(f"`{key}` must be a string (got {type(val).__name__})")
        return ""
    if not val.strip():
        problems.append(f"`{key}` is empty")
    return val


def example_from_row(row: Any, max_candidates: int | None = None) -> ListwiseExample:
    """Validate one row; raise ValueError listing every problem with the row (no location)."""
    if not isinstance(row, dict):
        raise ValueError(f"row must be a JSON object, got {type(row).__name__}")
    problems: list[str] = []
    unknown = set(row) - {"qid", "query", "candidates", "ranking", "relevance", "qrels", "teacher_scores"}
    if unknown:
        problems.append(f"unknown field(s) {sorted(unknown)}; allowed: qid, query, candidates, ranking, relevance, "
                        "qrels, teacher_scores")
    qid = _str_field(row, "qid", problems)
    query = _str_field(row, "query", problems)
    cands_raw = row.get("candidates")
    cands: list[Candidate] = []
    if not isinstance(cands_raw, list) or not cands_raw:
        problems.append("`candidates` must be a non-empty list of {docid, text[, title]}")
    else:
        for i, c in enumerate(cands_raw):
            docid = c.get("docid") if isinstance(c, dict) else None
            if not isinstance(docid, (str, int)) or isinstance(docid, bool):
                problems.append(f"candidates[{i}] needs a string `docid`")
                continue
            if not str(docid).strip():
                problems.append(f"candidates[{i}] has an empty `docid`")
                continue
            extra = set(c) - CANDIDATE_KEYS
            if extra:  # as strict as the top level: a typo such as `txt` must not vanish
                problems.append(f"candidates[{i}] (docid {docid}) has unknown field(s) {sorted(extra)}; "
                                "allowed: docid, text, title")
                continue
            text = c.get("text")
            if not isinstance(text, str) or not text.strip():
                problems.append(f"candidates[{i}] (docid {docid}) has empty or missing `text`")
                continue
            title = c.get("title")
            if title is not None and not isinstance(title, str):
                problems.append(f"candidates[{i}] (docid {docid}) `title` must be a string or null "
                                f"(got {type(title).__name__})")
                continue
            cands.append(Candidate(str(docid), text, title or None))
    docids = [c.docid for c in cands]
    dups = [d for d, n in Counter(docids).items() if n > 1]
    if dups:
        problems.append(f"duplicate candidate docid(s) {dups[:5]}")
    if max_candidates is not None and len(cands_raw or []) > max_candidates:
        problems.append(
            f"{len(cands_raw)} candidates but the identifier scheme allows at most {max_candidates} "
            "(use prompt.identifiers=special or numeric, or cut each list to its first N candidates "
            "with data.window=N)"
        )
    ranking_raw = row.get("ranking")
    ranking: list[str] = []
    if not isinstance(ranking_raw, list):
        problems.append("`ranking` must be a list of docids, best first")
    else:
        ranking = [str(d) for d in ranking_raw]
        if cands and not dups and Counter(ranking) != Counter(docids):
            missing = sorted(set(docids) - set(ranking))[:5]
            extra = sorted(set(ranking) - set(docids))[:5]
            repeated = [d for d, n in Counter(ranking).items() if n > 1][:5]
            problems.append(
                "`ranking` is not a permutation of the candidates "
                f"(missing {missing}, unknown {extra}, repeated {repeated})"
            )
    rel = _aligned_numbers(row, "relevance", len(cands_raw or []), problems)
    teacher = _aligned_numbers(row, "teacher_scores", len(cands_raw or []), problems)
    qrels = _qrels_field(row.get("qrels"), problems)
    if problems:
        raise ValueError("; ".join(problems))
    return ListwiseExample(qid, query, cands, ranking, rel, qrels, teacher)


def _aligned_numbers(row: dict, key: str, n: int, problems: list[str]) -> list[float] | None:
    """An optional per-candidate list of finite numbers (`relevance`, `teacher_scores`)."""
    vals = row.get(key)
    if vals is None:
        return None
    if not isinstance(vals, list) or len(vals) != n or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals
    ):
        got = f"{len(vals)} values for {n} candidates" if isinstance(vals, list) else type(vals).__name__
        problems.append(f"`{key}` must be a list of numbers aligned with `candidates` (got {got})")
        return None
    if not all(math.isfinite(x) for x in vals):
        bad = [i for i, x in enumerate(vals) if not math.isfinite(x)][:5]
        problems.append(f"`{key}` must be finite numbers (NaN/Infinity at position(s) {bad})")
        return None
    return [float(x) for x in vals]


def _qrels_field(raw: Any, problems: list[str]) -> dict[str, int] | None:
    """`qrels`: {docid: integer grade} (JSON), or [{docid, relevance}] (how Parquet stores it)."""
    if raw is None:
        return None
    if isinstance(raw, list) and all(isinstance(x, dict) and set(x) == {"docid", "relevance"} for x in raw):
        raw = {x["docid"]: x["relevance"] for x in raw}
    if not isinstance(raw, dict) or not all(
        isinstance(g, int) and not isinstance(g, bool) or isinstance(g, float) and g.is_integer() for g in raw.values()
    ):
        problems.append("`qrels` must map docid -> integer grade (every judged document of the query, as in TREC qrels)")
        return None
    return {str(d): int(g) for d, g in raw.items()}


class _BadLine(str):
    """A line that is not valid JSON (kept in the stream so it is counted or reported)."""


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Streamed line by line in binary, so a non-UTF-8 byte is reported at its own line."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield lineno, _BadLine(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                       "re-encode the file as UTF-8")
                continue
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                truncated = not line.endswith("\n")
                hint = " (the last line looks truncated: was the file cut short?)" if truncated else ""
                yield lineno, _BadLine(f"invalid JSON: {e.msg} at column {e.colno}{hint}")


def _not_a_file(path: Path) -> DataError | None:
    if not path.exists():
        return DataError(f"{path}: data file not found (check data.train / data.eval paths)")
    if path.is_dir():
        return DataError(f"{path}: is a directory, not a {path.suffix} data file; point the recipe at the file "
                         "itself (a directory of .parquet files is read as one data set)")
    return None


def _iter_parquet(files: list[Path]) -> Iterator[tuple[str, Any]]:
    """Rows streamed batch by batch: validating a large file never holds it in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for f in files:
        i = 0
        try:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    i += 1
                    yield f"{f}:row {i}", row
        except (pa.ArrowException, OSError) as e:
            where = f"{f}:row {i + 1}" if i else str(f)
            raise DataError(f"{where}: not a readable Parquet file ({type(e).__name__}: {e}); re-write it "
                            "(e.g. with lrt.data.schema.write_examples)") from None


def _iter_source(source: str, split: str) -> Iterator[tuple[str, Any]]:
    """Yield (location, row) from a JSONL/JSON/Parquet file or any `datasets` source."""
    path = Path(source)
    if path.suffix == ".jsonl":
        err = _not_a_file(path)
        if err:
            raise err
        try:
            for lineno, row in _iter_jsonl(path):
                yield f"{path}:{lineno}", row
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
        return
    if path.suffix == ".parquet" or (path.is_dir() and any(path.glob("*.parquet"))):
        if path.is_dir():
            files = sorted(path.glob("*.parquet"))
            if not files:
                raise DataError(f"{path}: is a directory without .parquet files; point the recipe at the data file")
        else:
            err = _not_a_file(path)
            if err:
                raise err
            files = [path]
        yield from _iter_parquet(files)
        return
    if path.suffix == ".json" and path.exists():
        err = _not_a_file(path)
        if err:
            raise err
        try:
            rows = json.loads(path.read_bytes().decode("utf-8-sig"))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not valid UTF-8 (byte offset {e.start}); re-encode the file as UTF-8") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg} at column {e.colno}; fix the file "
                            "(or write one row per line as .jsonl)") from None
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON array of rows (or use .jsonl)")
        for i, row in enumerate(rows, 1):
            yield f"{path}:item {i}", row
        return
    if path.suffix and not path.exists():
        raise DataError(f"{source}: data file not found (check the data paths in the recipe)")
    import datasets  # hub id or local dataset directory

    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as e:  # noqa: BLE001 - surface as one user-facing message
        raise DataError(f"{source}: cannot load as a `datasets` source ({type(e).__name__}: {e})") from None
    for i, row in enumerate(ds, 1):
        yield f"{source}[{split}]:row {i}", row


def missing_teacher_scores(where: str, losses: Iterable[str]) -> DataError:
    """The one error for distillation terms on data without per-candidate teacher scores."""
    names = ", ".join(sorted(losses))
    return DataError(
        f"{where}: no `teacher_scores`, but loss term(s) {names} train on the teacher's score of each candidate: "
        "prepare the data with a scores teacher (lrt prep with teacher.kind=scores, e.g. data_prep/distill-scores.yaml) "
        "or a hf/openai teacher with labels.teacher_scores=true, or remove the term(s) from the recipe's loss"
    )


def iter_examples(
    source: str | os.PathLike,
    report: SkipReport,
    *,
    on_invalid: OnInvalid = "error",
    max_candidates: int | None = None,
    split: str = "train",
    unique_qids: bool = True,
    need_teacher_scores: Iterable[str] = (),
) -> Iterator[ListwiseExample]:
    """Stream validated rows; raise on the first bad row or skip-and-count it in `report`.

    Only the qids seen so far are kept (to reject repeats with both locations), so a whole file can
    be checked without loading it. `need_teacher_scores` (the loss terms that need them): a row
    without `teacher_scores` is an error whatever `on_invalid` says (the data was not made for
    distillation; skipping would silently train on a subset).
    """
    need = tuple(need_teacher_scores)
    seen: dict[str, str] = {}
    for where, row in _iter_source(str(source), split):
        report.total += 1
        try:
            if isinstance(row, _BadLine):
                raise ValueError(str(row))
            ex = example_from_row(row, max_candidates)
            if unique_qids:
                if ex.qid in seen:
                    raise ValueError(f"duplicate qid {ex.qid!r} (first at {seen[ex.qid]}); every query must "
                                     "appear once (rankings, evaluation and resume are keyed by qid)")
                seen[ex.qid] = where
        except ValueError as e:
            if on_invalid == "error":
                raise DataError(f"{where}: {e} (fix the row, or set data.on_invalid=skip to count and skip it)") from None
            report.add(where, str(e))
            continue
        if need and ex.teacher_scores is None:
            raise missing_teacher_scores(where, need)
        yield ex


def load_examples(
    source: str | os.PathLike,
    *,
    on_invalid: OnInvalid = "error",
    max_candidates: int | None = None,
    split: str = "train",
    limit: int | None = None,
    need_teacher_scores: Iterable[str] = (),
) -> tuple[list[ListwiseExample], SkipReport]:
    """Load and validate canonical rows; raise on the first bad row or skip-and-count them."""
    report = SkipReport()
    out: list[ListwiseExample] = []
    for ex in iter_examples(source, report, on_invalid=on_invalid, max_candidates=max_candidates, split=split,
                            need_teacher_scores=need_teacher_scores):
        out.append(ex)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        _no_rows(source, report)
    return out, report


def _no_rows(source: str | os.PathLike, report: SkipReport) -> None:
    if report.total == 0:
        raise DataError(f"{source}: no rows (the file is empty); check that data prep wrote it")
    raise DataError(f"{source}: no valid rows ({report.summary()})")


def validate_source(
    source: str | os.PathLike,
    *,
    on_invalid: OnInvalid = "error",
    max_candidates: int | None = None,
    split: str = "train",
    need_teacher_scores: Iterable[str] = (),
) -> tuple[int, SkipReport]:
    """Check every row of a source, streaming (nothing kept but qids): (valid rows, skip report)."""
    report = SkipReport()
    n = sum(1 for _ in iter_examples(source, report, on_invalid=on_invalid, max_candidates=max_candidates,
                                     split=split, need_teacher_scores=need_teacher_scores))
    if n == 0:
        _no_rows(source, report)
    return n, report


def write_examples(examples: Iterable[ListwiseExample], path: str | os.PathLike) -> Path:
    """Write rows as JSONL or Parquet (by suffix), atomically: readers never see a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [e.to_row() for e in examples]
    if path.suffix == ".parquet":  # Arrow needs one schema: give every row every optional field
        for r in rows:
            r.setdefault("relevance", None)
            r.setdefault("teacher_scores", None)
            q = r.get("qrels")  # a struct per docid would not share one schema: store pairs
            r["qrels"] = None if q is None else [{"docid": d, "relevance": g} for d, g in q.items()]
            for c in r["candidates"]:
                c.setdefault("title", None)
    def write(fh: Any) -> None:
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), fh)
        else:
            for r in rows:
                fh.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))

    atomic_write(path, write)
    return path
