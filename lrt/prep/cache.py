"""On-disk cache of teacher answers: nothing lost, nothing paid twice.

Every answer is committed to SQLite (WAL journal) the moment it arrives, keyed by a hash of what
determines it (teacher kind, model, exact prompt or window, decoding settings; never the API key).
A job killed with SIGKILL therefore loses at most the calls in flight: on re-run every answered
window is a cache hit and the deterministic builder asks for exactly the same windows again.
WAL with `synchronous=NORMAL` survives process death (only an OS crash can lose the last commits),
and readers never block the writer. Keep the file on a local disk or one file per Slurm task:
SQLite locking is unreliable across hosts on network filesystems.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from lrt.errors import LrtError
from lrt.prep.teachers import OnResponse, Teacher, WindowRequest, WindowResponse, response_from_raw

_SCHEMA = """CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY, raw TEXT NOT NULL, qid TEXT, docids TEXT, meta TEXT, created REAL)"""


class CallCache:
    """key -> raw teacher text (+ qid/docids for audits), committed one answer at a time."""

    def __init__(self, path: str | Path, journal: str = "wal") -> None:
        self.path = Path(path)
        self._tx = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            self.db.execute(f"PRAGMA journal_mode={'WAL' if journal == 'wal' else 'DELETE'}")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise LrtError(f"{self.path}: cannot open the call cache ({e}); delete it to start over "
                           "(answered calls will be paid again)") from None

    def get_many(self, keys: Iterable[str]) -> dict[str, str]:
        keys = list(dict.fromkeys(keys))
        out: dict[str, str] = {}
        for i in range(0, len(keys), 500):  # stay below SQLite's bound-parameter limit
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            out.update(self.db.execute(f"SELECT key, raw FROM answers WHERE key IN ({marks})", chunk).fetchall())
        return out

    def get_meta(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The stored meta of each known key (e.g. a teacher's first-token `scores`)."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(f"SELECT key, meta FROM answers WHERE key IN ({marks})", chunk).fetchall()
            out.update({k: json.loads(m) if m else {} for k, m in rows})
        return out

    def put(self, key: str, raw: str, req: WindowRequest | None = None, meta: dict[str, Any] | None = None,
            commit: bool = True) -> None:
        """Insert and, by default, commit now: the answer survives a kill one instant later.

        `commit=False` groups inserts into one transaction until `commit()` (bulk imports and
        tests only): teachers' answers are always committed one by one, free ones too, so a kill
        never makes a re-run repeat an answered call (~90 us per commit in WAL mode).
        """
        if not commit and not self._tx:
            self.db.execute("BEGIN")
            self._tx = True
        self.db.execute(
            "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?)",
            (key, raw, req.qid if req else None, json.dumps(list(req.docids)) if req else None,
             json.dumps(meta or {}), time.time()),
        )
        if commit and self._tx:
            self.commit()

    def commit(self) -> None:
        if self._tx:
            self.db.execute("COMMIT")
            self._tx = False

    def windows(self) -> list[tuple[str, tuple[str, ...]]]:
        """(qid, docids) of every cached answer: lets tests and audits see what was paid for."""
        rows = self.db.execute("SELECT qid, docids FROM answers").fetchall()
        return [(q, tuple(json.loads(d) if d else ())) for q, d in rows]

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self.commit()
        self.db.close()


class CachedTeacher:
    """Wraps a teacher: serves known windows from the cache, deduplicates repeats within a batch,
    and stores each new answer as soon as the inner teacher reports it."""

    def __init__(self, inner: Teacher, cache: CallCache) -> None:
        self.inner = inner
        self.cache = cache
        self.kind = inner.kind
        self.scheme = inner.scheme
        self.hits = 0
        self.misses = 0

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def cache_key(self, req: WindowRequest) -> str:
        return self.inner.cache_key(req)

    def stats(self) -> dict[str, int]:
        return {**self.inner.stats(), "cache_hits": self.hits, "cache_misses": self.misses}

    def rank_windows(self, requests: Sequence[WindowRequest], on_response: OnResponse | None = None) -> list[WindowResponse]:
        keys = [self.inner.cache_key(r) for r in requests]
        known = self.cache.get_many(keys)
        metas = self.cache.get_meta(known) if getattr(self.inner, "first_token_scores", False) else {}
        out: list[WindowResponse | None] = [None] * len(requests)
        todo: dict[str, int] = {}  # key -> index into `fresh`
        fresh: list[WindowRequest] = []
        for i, (req, key) in enumerate(zip(requests, keys)):
            if key in known:
                scores = metas.get(key, {}).get("scores")  # replayed with the answer they came with
                out[i] = response_from_raw(known[key], len(req.docids), self.inner.scheme,
                                           **({"scores": scores} if scores is not None else {}))
                out[i].cached = True
                self.hits += 1
                if on_response is not None:
                    on_response(i, out[i])
            elif key not in todo:
                todo[key] = len(fresh)
                fresh.append(req)
        fresh_keys = list(todo)

        def store(j: int, resp: WindowResponse) -> None:  # committed before the next call starts
            # a refusal (no identifier at all) is not an answer: never cached, so a re-run asks again
            if resp.error is None and resp.raw is not None and resp.parsed is not None and resp.parsed.extracted:
                self.cache.put(fresh_keys[j], resp.raw, fresh[j], resp.meta)

        answers = self.inner.rank_windows(fresh, on_response=store) if fresh else []
        self.misses += len(fresh)
        for i, key in enumerate(keys):
            if out[i] is None:
                j = todo[key]
                resp = answers[j]
                if fresh[j] is not requests[i]:  # a repeat of a window already asked in this batch
                    resp = WindowResponse(resp.raw, resp.parsed, resp.error, True, resp.meta)
                    self.hits += resp.error is None
                out[i] = resp
                if on_response is not None:
                    on_response(i, resp)
        return out  # type: ignore[return-value]
