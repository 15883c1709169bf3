"""The canonical listwise example and its loaders.

One row = one query with its candidates in first-stage (display) order and a teacher ranking that is
a complete permutation of them. Every loader validates every row and either raises one `DataError`
naming `file:line` or, with `on_invalid="skip"`, counts what it skipped: nothing is dropped silently.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from lrt.errors import DataError
from lrt.io.atomic import atomic_write

OnInvalid = Literal["error", "skip"]


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
        self.reasons[problem.split(":")[0]] += 1
        if len(self.examples) < 10:
            self.examples.append(f"{where}: {problem}")

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.total} rows, none skipped"
        head = "; ".join(self.examples[:3])
        return f"{self.total} rows, {self.skipped} skipped ({dict(self.reasons)}), e.g. {head}"


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
    unknown = set(row) - {"qid", "query", "candidates", "ranking", "relevance"}
    if unknown:
        problems.append(f"unknown field(s) {sorted(unknown)}; allowed: qid, query, candidates, ranking, relevance")
    qid = _str_field(row, "qid", problems)
    query = _str_field(row, "query", problems)
    cands_raw = row.get("candidates")
    cands: list[Candidate] = []
    if not isinstance(cands_raw, list) or not cands_raw:
        problems.append("`candidates` must be a non-empty list of {docid, text[, title]}")
    else:
        for i, c in enumerate(cands_raw):
            if not isinstance(c, dict) or not isinstance(c.get("docid"), (str, int)):
                problems.append(f"candidates[{i}] needs a string `docid`")
                continue
            text = c.get("text")
            if not isinstance(text, str) or not text.strip():
                problems.append(f"candidates[{i}] (docid {c['docid']}) has empty or missing `text`")
                continue
            title = c.get("title")
            cands.append(Candidate(str(c["docid"]), text, title if isinstance(title, str) and title else None))
    docids = [c.docid for c in cands]
    dups = [d for d, n in Counter(docids).items() if n > 1]
    if dups:
        problems.append(f"duplicate candidate docid(s) {dups[:5]}")
    if max_candidates is not None and len(cands_raw or []) > max_candidates:
        problems.append(
            f"{len(cands_raw)} candidates but the identifier scheme allows at most {max_candidates} "
            "(use prompt.identifiers=special or numeric, or cut the list with data.max_candidates)"
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
    rel = row.get("relevance")
    if rel is not None:
        if not isinstance(rel, list) or len(rel) != len(cands_raw or []) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in rel
        ):
            problems.append("`relevance` must be a list of numbers aligned with `candidates`")
            rel = None
        else:
            rel = [float(x) for x in rel]
    if problems:
        raise ValueError("; ".join(problems))
    return ListwiseExample(qid, query, cands, ranking, rel)


class _BadLine(str):
    """A line that is not valid JSON (kept in the stream so it is counted or reported)."""


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                truncated = not line.endswith("\n")
                hint = " (the last line looks truncated: was the file cut short?)" if truncated else ""
                yield lineno, _BadLine(f"invalid JSON: {e.msg} at column {e.colno}{hint}")


def _iter_source(source: str, split: str) -> Iterator[tuple[str, Any]]:
    """Yield (location, row) from a JSONL/JSON/Parquet file or any `datasets` source."""
    path = Path(source)
    if path.suffix == ".jsonl":
        if not path.exists():
            raise DataError(f"{source}: data file not found (check data.train / data.eval paths)")
        for lineno, row in _iter_jsonl(path):
            yield f"{path}:{lineno}", row
        return
    if path.suffix == ".parquet" or (path.is_dir() and any(path.glob("*.parquet"))):
        import pyarrow.parquet as pq

        files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        if not files or not all(f.exists() for f in files):
            raise DataError(f"{source}: parquet file not found")
        for f in files:
            for i, row in enumerate(pq.read_table(f).to_pylist(), 1):
                yield f"{f}:row {i}", row
        return
    if path.suffix == ".json" and path.exists():
        rows = json.loads(path.read_text(encoding="utf-8"))
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


def load_examples(
    source: str | os.PathLike,
    *,
    on_invalid: OnInvalid = "error",
    max_candidates: int | None = None,
    split: str = "train",
    limit: int | None = None,
) -> tuple[list[ListwiseExample], SkipReport]:
    """Load and validate canonical rows; raise on the first bad row or skip-and-count them."""
    report = SkipReport()
    out: list[ListwiseExample] = []
    for where, row in _iter_source(str(source), split):
        report.total += 1
        try:
            if isinstance(row, _BadLine):
                raise ValueError(str(row))
            out.append(example_from_row(row, max_candidates))
        except ValueError as e:
            if on_invalid == "error":
                raise DataError(f"{where}: {e} (fix the row, or set data.on_invalid=skip to count and skip it)") from None
            report.add(where, str(e))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DataError(f"{source}: no valid rows ({report.summary()})")
    return out, report


def write_examples(examples: Iterable[ListwiseExample], path: str | os.PathLike) -> Path:
    """Write rows as JSONL or Parquet (by suffix), atomically: readers never see a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [e.to_row() for e in examples]
    if path.suffix == ".parquet":  # Arrow needs one schema: give every row every optional field
        for r in rows:
            r.setdefault("relevance", None)
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
