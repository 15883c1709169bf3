"""Generate the tutorial's synthetic collection (docs/own-data.md): the same data as a BEIR folder and
as TREC files, plus a BM25 top-20 run. Deterministic: `python make_collection.py` rewrites the
shipped files byte for byte (tests/test_byod_tutorial.py checks it).

Words come from the vocabulary of lrt's shipped tiny backbone (`lrt.demo.world.make_lexicon`), so
the CPU tutorial's model can read every token. Relevance is a rule BM25 cannot see: grade 2 when the
passage holds the two query words as an adjacent phrase ("a b"), 1 when it holds both apart, 0 when
it holds one. A few queries have no relevant passage at all, as real collections do.
"""
from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

from lrt.demo.world import make_lexicon

SEED, N_QUERIES, N_EMPTY, N_BACKGROUND, DEPTH = 23, 80, 6, 160, 20


def passage(rng: random.Random, words: list[str], fill: list[str], n: int = 12) -> list[str]:
    """`n` filler words with `words` inserted at random places (in the given order, not adjacent)."""
    out = rng.choices(fill, k=n)
    for w in words:
        out.insert(rng.randrange(len(out) + 1), w)
    return out


def grade(text: list[str], a: str, b: str) -> int | None:
    """The collection's relevance rule (None: the passage holds no query word)."""
    if a not in text and b not in text:
        return None
    if any(x == a and y == b for x, y in zip(text, text[1:])):
        return 2
    return 1 if a in text and b in text else 0


def bm25(docs: dict[str, list[str]], query: list[str], k1: float = 0.9, b: float = 0.4) -> list[tuple[str, float]]:
    """Okapi BM25 (Anserini's default k1, b); documents without a query word are not retrieved."""
    n, avg = len(docs), sum(map(len, docs.values())) / len(docs)
    df = Counter(w for t in docs.values() for w in set(t))
    scores = []
    for d, t in docs.items():
        tf = Counter(t)
        s = sum(math.log(1 + (n - df[w] + 0.5) / (df[w] + 0.5)) * tf[w] * (k1 + 1)
                / (tf[w] + k1 * (1 - b + b * len(t) / avg)) for w in query if tf[w])
        if s > 0:
            scores.append((d, round(s, 4)))
    return sorted(scores, key=lambda p: (-p[1], p[0]))[:DEPTH]


def main(out: Path = Path(__file__).resolve().parent) -> None:
    rng = random.Random(SEED)
    lex = make_lexicon(240, 0)
    qwords = rng.sample(lex, 2 * N_QUERIES)
    queries = {f"q{i + 1}": (qwords[2 * i], qwords[2 * i + 1]) for i in range(N_QUERIES)}
    docs: dict[str, list[str]] = {}
    for i, (q, (a, b)) in enumerate(queries.items()):
        empty = i % (N_QUERIES // N_EMPTY) == 0 and i // (N_QUERIES // N_EMPTY) < N_EMPTY
        kinds = ["one"] * 8 if empty else ["phrase"] * 2 + ["both"] * 3 + ["one"] * 3
        for j, kind in enumerate(kinds):
            if kind == "phrase":
                text = passage(rng, [], lex)
                k = rng.randrange(len(text) + 1)
                text[k:k] = [a, b]
            elif kind == "both":
                text = passage(rng, [b, a] if rng.random() < 0.5 else [a, b], lex)
                while grade(text, a, b) != 1:
                    text = passage(rng, [a, b], lex)
            else:
                text = passage(rng, [rng.choice((a, b))] * rng.choice((1, 2, 3)), lex)
                while grade(text, a, b) != 0:
                    text = passage(rng, [a], lex)
            docs[f"d{len(docs) + 1}"] = text
    for _ in range(N_BACKGROUND):
        docs[f"d{len(docs) + 1}"] = passage(rng, [], lex, n=14)
    order = list(docs)
    rng.shuffle(order)  # docids say nothing about the query they were written for
    docs = {f"doc{k + 1}": docs[d] for k, d in enumerate(order)}

    runs, qrels = {}, {}
    for q, (a, b) in queries.items():
        runs[q] = bm25(docs, [a, b])
        pool = {d for d, _ in runs[q]} | {d for d, t in docs.items() if (grade(t, a, b) or 0) > 0}
        qrels[q] = {d: grade(docs[d], a, b) or 0 for d in sorted(pool, key=lambda d: int(d[3:]))}

    beir, trec = out / "beir", out / "trec"
    (beir / "qrels").mkdir(parents=True, exist_ok=True)
    trec.mkdir(parents=True, exist_ok=True)
    write(beir / "queries.jsonl", [json.dumps({"_id": q, "text": f"{a} {b}"}) for q, (a, b) in queries.items()])
    write(beir / "corpus.jsonl", [json.dumps({"_id": d, "title": "", "text": " ".join(t)}) for d, t in docs.items()])
    write(beir / "qrels" / "test.tsv", ["query-id\tcorpus-id\tscore"] +
          [f"{q}\t{d}\t{g}" for q, js in qrels.items() for d, g in js.items()])
    write(trec / "topics.tsv", [f"{q}\t{a} {b}" for q, (a, b) in queries.items()])
    write(trec / "corpus.tsv", [f"{d}\t{' '.join(t)}" for d, t in docs.items()])
    write(trec / "qrels.txt", [f"{q} 0 {d} {g}" for q, js in qrels.items() for d, g in js.items()])
    write(out / "bm25.trec", [f"{q} Q0 {d} {r} {s} bm25" for q, hits in runs.items()
                              for r, (d, s) in enumerate(hits, 1)])


def write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


if __name__ == "__main__":
    main()
