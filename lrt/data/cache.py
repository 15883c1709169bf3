"""Tokenised-dataset cache: validate and tokenise once, memory-map everywhere.

Two Arrow stores per split, each in a directory named by its fingerprint:

- `examples-<fp>`: the validated listwise examples (texts included), keyed by the data file's
  contents and the loader settings. Read lazily (evaluation reranks from it; training reads the
  candidate counts only).
- `encoded-<fp>`: the output of `lrt.data.collate.encode_example` for every example, keyed by the
  examples' key plus everything that changes the encoding: the tokenizer (vocabulary, merges, added
  tokens, chat template), the prompt template and identifier scheme, the probed identifier ids,
  `max_length`, the window, whether the target is kept, the lrt version and a hash of the encoder's own
  source (collate/prompts/schema), so a change there invalidates old caches without a version bump
  (the fingerprints: lrt.data.fingerprint).

A store is complete only once its `manifest.json` exists (written last, atomically), so a killed
build is never read. The manifest records every Arrow piece's size and CRC-32; opening a store
checks them (`lrt.data.cache_check`: a changed token id, a truncated or missing piece is one clear
error naming the directory to delete, never silently used). Two processes building one store race
harmlessly: the loser of the final rename uses the winner's identical store. A write that fails
(full disk, read-only or misnamed `data.cache_dir`) removes its temporary directory and is one
clear error. A fingerprint mismatch is simply another directory: a stale cache cannot be picked up. The encoded store may be built in K contiguous shards by separate processes
(`lrt prep tokenize --num-shards K --shard-id I`); the manifest lists its Arrow pieces in order.
Stores are Arrow IPC files written and memory-mapped with pyarrow alone (no `datasets` import in the
ranks: it would cost ~60 MB of RSS per rank before the first row): ranks share the page cache instead
of each holding Python lists, and DataLoader workers inherit or re-map the files instead of copying.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from lrt.data.cache_check import check_root, piece_digests, verify, write_error
# the keys of the stores (re-exported: lrt.data.cache.stable_hash etc. are used by train and the tests)
from lrt.data.fingerprint import code_fingerprint, source_fingerprint, stable_hash, tokenizer_fingerprint  # noqa: F401
from lrt.data.schema import ListwiseExample, SkipReport, _no_rows, example_from_row, iter_examples
from lrt.errors import LrtError
from lrt.io.atomic import atomic_write

log = logging.getLogger("lrt")


# ---- Arrow schemas ----------------------------------------------------------------------------
def example_schema() -> Any:
    import pyarrow as pa

    s = pa.string()
    return pa.schema([
        ("qid", s), ("query", s),
        ("candidates", pa.list_(pa.struct([("docid", s), ("text", s), ("title", s)]))),
        ("ranking", pa.list_(s)),
        ("relevance", pa.list_(pa.float64())),
        ("teacher_scores", pa.list_(pa.float64())),  # per candidate; score distillation trains on it
        ("n_candidates", pa.int32()),
        ("extra", s),  # JSON of any other field of the row (e.g. the query's full `qrels`)
    ])


def encoded_schema(fields: Sequence[tuple[str, Any]]) -> Any:
    """Arrow types from the `Encoded` dataclass fields: ints as int32 (half of int64 on disk and in the
    page cache; every token id and position fits), floats as float64 (read back exactly)."""
    import pyarrow as pa

    kinds = {"int": pa.int32(), "bool": pa.bool_(), "list[int]": pa.list_(pa.int32()),
             "float": pa.float64(), "list[float]": pa.list_(pa.float64()),
             "list[float] | None": pa.list_(pa.float64()), "list[int] | None": pa.list_(pa.int32())}
    cols = []
    for name, ann in fields:
        ann = ann if isinstance(ann, str) else str(ann)
        if ann not in kinds:
            raise TypeError(f"Encoded.{name}: annotation {ann!r} has no Arrow type in lrt.data.cache.encoded_schema")
        cols.append((name, kinds[ann]))
    cols.append(("length", pa.int32()))
    return pa.schema(cols)


class _Writer:
    """Rows -> one Arrow IPC stream file, in record batches (a few hundred rows in memory at most)."""

    def __init__(self, path: str, schema: Any, batch: int = 256) -> None:
        import pyarrow as pa

        self.schema, self.batch, self.buf = schema, batch, []  # type: ignore[var-annotated]
        self.sink = pa.OSFile(path, "wb")
        self.w = pa.ipc.new_stream(self.sink, schema)

    def write(self, row: dict[str, Any]) -> None:
        self.buf.append(row)
        if len(self.buf) >= self.batch:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self.buf:
            self.w.write_batch(pa.RecordBatch.from_pylist(self.buf, schema=self.schema))
            self.buf = []

    def __enter__(self) -> "_Writer":
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.flush()
        self.w.close()
        self.sink.close()


def encoded_fields() -> list[tuple[str, Any]]:
    from lrt.data.collate import Encoded

    return [(f.name, f.type) for f in dataclasses.fields(Encoded)]


# ---- lazy views ---------------------------------------------------------------------------------
class ArrowRows:
    """Memory-mapped Arrow files as one table; `t[i]` is row i as a dict of Python values. Pickles as
    its paths (a spawned DataLoader worker re-maps the files instead of receiving a copy)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        import pyarrow as pa

        self.paths = [str(p) for p in paths]
        tables = [pa.ipc.open_stream(pa.memory_map(p, "r")).read_all() for p in self.paths]  # zero-copy views
        self.table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.table.slice(int(i), 1).to_pylist()[0]

    def column(self, name: str) -> np.ndarray:
        return self.table.column(name).to_numpy()

    def __getstate__(self) -> dict[str, Any]:
        return {"paths": self.paths}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["paths"])  # type: ignore[misc]


class LazyExamples(Sequence[ListwiseExample]):
    """`ListwiseExample`s read one at a time from the mapped examples store; slicing gives a view."""

    def __init__(self, ds: Any, index: np.ndarray | None = None, key: str = "") -> None:
        self.ds = ds
        self.index = np.arange(len(ds)) if index is None else index
        self.key = key  # the store's fingerprint (part of the encoded store's)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: Any) -> Any:  # int -> example, slice -> view
        if isinstance(i, slice):
            return LazyExamples(self.ds, self.index[i], self.key)
        return _example(self.ds[int(self.index[i])])

    def __iter__(self) -> Iterator[ListwiseExample]:
        for i in self.index:
            yield _example(self.ds[int(i)])

    @property
    def n_candidates(self) -> np.ndarray:
        return self.ds.column("n_candidates")[self.index]

    def without_teacher_scores(self) -> list[str]:
        """qids of the lists that have no `teacher_scores` (read from the column, not the rows)."""
        col = self.ds.table.column("teacher_scores").is_null().to_numpy(zero_copy_only=False)[self.index]
        qids = self.ds.table.column("qid")
        return [qids[int(i)].as_py() for i in self.index[col]]


_COLUMNS = ("qid", "query", "candidates", "ranking", "relevance", "teacher_scores")


def _store_row(ex: ListwiseExample) -> dict[str, Any]:
    """Typed columns for what every row has; any other field of `to_row` (e.g. `qrels`) as JSON."""
    row = ex.to_row()
    out = {k: row.pop(k, None) for k in _COLUMNS}
    for c in out["candidates"]:
        c.setdefault("title", None)
    out["n_candidates"] = len(ex.candidates)
    out["extra"] = json.dumps(row, sort_keys=True) if row else None
    return out


def _example(row: dict[str, Any]) -> ListwiseExample:
    """Back through the loader's own constructor, so a field the schema gains is never dropped."""
    r: dict[str, Any] = {"qid": row["qid"], "query": row["query"], "ranking": row["ranking"],
                         "candidates": [{k: v for k, v in c.items() if v is not None} for c in row["candidates"]]}
    for k in ("relevance", "teacher_scores"):
        if row.get(k) is not None:
            r[k] = row[k]
    if row.get("extra"):
        r.update(json.loads(row["extra"]))
    return example_from_row(r)


class EncodedRows(Sequence[dict]):
    """Encoded training rows read lazily from the mapped store: `rows[i]` is the dict the collator
    takes (Python ints per row, for one batch at a time); `lengths` is the token count of every row."""

    def __init__(self, ds: Any, path: Path | None = None) -> None:
        self.ds = ds
        self.path = path
        self.lengths = np.asarray(ds.column("length"), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: Any) -> dict[str, Any]:
        return self.ds[int(i)]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self.ds[i]

    def take(self, idx: Sequence[int]) -> list[dict[str, Any]]:
        return [self.ds[int(i)] for i in idx]

    def column(self, name: str) -> np.ndarray:
        """One scalar column of every row (e.g. `length`, `truncated`) without reading the rows."""
        return self.ds.column(name)


# ---- stores -------------------------------------------------------------------------------------
def _manifest(d: Path) -> dict[str, Any] | None:
    m = d / "manifest.json"
    if not m.is_file():
        return None
    try:
        return json.loads(m.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _write_manifest(d: Path, meta: dict[str, Any]) -> None:
    atomic_write(d / "manifest.json", lambda fh: fh.write(json.dumps(meta, indent=1).encode("utf-8")))


def _publish(tmp: Path, final: Path, marker: str = "manifest.json") -> None:
    """Rename a finished tmp dir into place; losing a race to an identical build (same fingerprint,
    so the same bytes) is fine: the loser drops its copy and uses the winner's."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / marker).is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def examples_key(source: str, split: str, on_invalid: str, max_candidates: int | None, limit: int | None) -> str:
    return stable_hash({"source": source_fingerprint(source, split), "split": split, "on_invalid": on_invalid,
                        "max_candidates": max_candidates, "limit": limit, "code": code_fingerprint()})[:20]


def build_examples(dest: Path, source: str, split: str, on_invalid: str, max_candidates: int | None,
                   limit: int | None, key: str) -> None:
    """Stream the source through the row validator into one Arrow file (never all rows in memory)."""
    tmp = dest.parent / f".tmp-{dest.name}-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        report = SkipReport()
        n = 0
        with _Writer(str(tmp / "examples.arrow"), example_schema()) as w:
            for ex in iter_examples(source, report, on_invalid=on_invalid, max_candidates=max_candidates, split=split):  # type: ignore[arg-type]
                w.write(_store_row(ex))
                n += 1
                if limit is not None and n >= limit:
                    break
        if not n:
            shutil.rmtree(tmp, ignore_errors=True)
            _no_rows(source, report)
        _write_manifest(tmp, {"kind": "examples", "key": key, "source": source, "rows": n, "skipped": report.skipped,
                              "skip_summary": report.summary(), "pieces": ["examples.arrow"],
                              "digests": piece_digests(tmp, ["examples.arrow"])})
        _publish(tmp, dest)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(dest.parent, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def open_examples(cache_dir: Path, source: str, split: str, on_invalid: str, max_candidates: int | None,
                  limit: int | None, build: bool = True) -> tuple[LazyExamples, dict[str, Any]]:
    """The examples store of a split, built first if missing (and `build`)."""
    key = examples_key(source, split, on_invalid, max_candidates, limit)
    d = Path(cache_dir) / f"examples-{key}"
    check_root(Path(cache_dir))
    meta = _manifest(d)
    if meta is None:
        if not build:
            raise FileNotFoundError(d)
        t0 = time.perf_counter()
        build_examples(d, source, split, on_invalid, max_candidates, limit, key)
        meta = _manifest(d)
        assert meta is not None
        log.info("data cache: validated %d lists of %s in %.1fs -> %s", meta["rows"], source, time.perf_counter() - t0, d)
    verify(d, meta)
    return LazyExamples(_rows(d, meta), key=key), {**meta, "dir": str(d)}


def _rows(d: Path, meta: dict[str, Any]) -> "ArrowRows":
    try:
        return ArrowRows([d / p for p in meta["pieces"]])
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise LrtError(f"data cache {d}: cannot read it ({type(e).__name__}: {str(e)[:200]}); delete {d} (it is "
                       "rebuilt on the next run)") from None


def encoded_key(examples_fp: str, tokenizer: Any, params: dict[str, Any]) -> str:
    return stable_hash({"examples": examples_fp, "tokenizer": tokenizer_fingerprint(tokenizer), "params": params,
                        "fields": [(n, str(t)) for n, t in encoded_fields()], "code": code_fingerprint()})[:20]


_WORKER: dict[str, Any] = {}  # set before forking encode workers (the tokenizer is inherited, not pickled)


def _encode_piece(job: tuple[int, int, str]) -> int:
    """Encode examples [start, stop) of the mapped examples store into one Arrow file."""

    start, stop, path = job
    encode: Callable[[ListwiseExample], dict[str, Any]] = _WORKER["encode"]
    src = _WORKER["examples"]
    from lrt.progress import Progress

    k = _WORKER.get("n_jobs", 1)  # the first piece's worker reports for all (pieces are equal-sized)
    bar = Progress(stop - start, "encode" if k == 1 else f"encode (worker 1 of {k})", unit="list", leave=False,
                   enabled=path == _WORKER.get("first_job") and os.environ.get("RANK", "0") == "0")
    with _Writer(path, _WORKER["schema"]) as w:
        for i in range(start, stop):
            row = encode(_example(src[i]))
            row["length"] = len(row["input_ids"])
            w.write(row)
            bar.update(1)
    bar.close()
    return stop - start


def _split(start: int, stop: int, k: int) -> list[tuple[int, int]]:
    n = stop - start
    return [(start + n * j // k, start + n * (j + 1) // k) for j in range(k)]


def shard_done(d: Path, num_shards: int, shard_id: int) -> bool:
    return (d / f"shards-{num_shards}" / f"{shard_id:05d}" / "done.json").is_file()


def build_encoded_shard(d: Path, examples: LazyExamples, encode: Callable[[ListwiseExample], dict[str, Any]],
                        num_shards: int, shard_id: int, num_proc: int = 1) -> Path:
    """Encode contiguous shard `shard_id` of `num_shards` into `d/shards-K/I` (atomically)."""
    final = d / f"shards-{num_shards}" / f"{shard_id:05d}"
    if shard_done(d, num_shards, shard_id):
        return final
    start, stop = _split(0, len(examples), num_shards)[shard_id]
    tmp = final.parent / f".tmp-{shard_id:05d}-{os.getpid()}"
    try:
        return _build_shard(tmp, final, examples, encode, start, stop, num_proc)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(d, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _build_shard(tmp: Path, final: Path, examples: LazyExamples, encode: Callable[[ListwiseExample], dict[str, Any]],
                 start: int, stop: int, num_proc: int) -> Path:
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pieces = _split(start, stop, max(1, min(num_proc, stop - start)))
    jobs = [(a, b, str(tmp / f"part-{j:03d}.arrow")) for j, (a, b) in enumerate(pieces)]
    _WORKER.update(encode=encode, examples=examples.ds, schema=encoded_schema(encoded_fields()),
                   first_job=jobs[0][2], n_jobs=len(jobs))
    try:
        if len(jobs) == 1:
            _encode_piece(jobs[0])
        else:
            import multiprocessing as mp

            with mp.get_context("fork").Pool(len(jobs)) as pool:
                pool.map(_encode_piece, jobs, chunksize=1)
    finally:
        _WORKER.clear()
    names = [Path(p).name for _, _, p in jobs]
    atomic_write(tmp / "done.json", lambda fh: fh.write(json.dumps(
        {"start": start, "stop": stop, "pieces": names, "digests": piece_digests(tmp, names)}).encode("utf-8")))
    _publish(tmp, final, "done.json")
    return final


def finish_encoded(d: Path, num_shards: int, meta: dict[str, Any]) -> bool:
    """Write the manifest once every shard of K exists; True when the store is complete."""
    if _manifest(d) is not None:
        return True
    base = d / f"shards-{num_shards}"
    pieces: list[str] = []
    digests: dict[str, list] = {}
    for i in range(num_shards):
        done = base / f"{i:05d}" / "done.json"
        if not done.is_file():
            return False
        info = json.loads(done.read_text(encoding="utf-8"))
        for p in info["pieces"]:
            name = f"shards-{num_shards}/{i:05d}/{p}"
            pieces.append(name)
            if p in info.get("digests", {}):
                digests[name] = info["digests"][p]
    try:
        _write_manifest(d, {**meta, "kind": "encoded", "num_shards": num_shards, "pieces": pieces, "digests": digests})
    except OSError as e:
        raise write_error(d, e) from None
    return True


def partial_shards(d: Path) -> int | None:
    """K of an unfinished sharded build (`lrt prep tokenize` killed or not run for every shard)."""
    for p in sorted(d.glob("shards-*")):
        try:
            return int(p.name.split("-", 1)[1])
        except ValueError:
            continue
    return None


def open_encoded(d: Path) -> EncodedRows:
    meta = _manifest(d)
    if meta is None:
        raise FileNotFoundError(d)
    verify(d, meta)
    return EncodedRows(_rows(d, meta), d)
