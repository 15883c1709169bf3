"""Deterministic synthetic IR world: pseudo-word lexicon, topics, graded passages, weak retriever.

Why synthetic: the quickstart must run offline in minutes, yet show a real nDCG gain that a reader
can trust. Relevance here is exact and checkable: a passage's grade (0-3) is the number of times it
contains a query word. The first-stage "retriever" is deliberately weak: it rewards query words but
is also fooled by *topical distractors* (same-topic words that are not query words) and noise, so
its display order beats random yet leaves clear room for a reranker that reads the text.

Every output is a pure function of (lexicon seed, topic seed, split seed, knobs), so two runs produce
byte-identical JSONL.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

_ONSETS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def make_lexicon(size: int, seed: int = 0) -> list[str]:
    """`size` distinct lowercase pseudo-words (CV syllables, 2-3 syllables), fixed for a seed.

    Lowercase only, so they can never collide with the upper-case identifier letters A..Z.
    """
    rng = random.Random(seed)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < size:
        n_syl = rng.choice((2, 3))
        w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n_syl))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def vocabulary_split(lexicon_size: int = 240, seed: int = 0) -> tuple[list[str], list[str]]:
    """(backbone-pretraining half, quickstart-query half) of the lexicon: fixed and disjoint, so the
    backbone never saw a lookup of any word the quickstart asks about."""
    order = sorted(make_lexicon(lexicon_size, seed))
    random.Random(5).shuffle(order)
    half = len(order) // 2
    return order[:half], order[half:]


@dataclass(frozen=True)
class World:
    """A lexicon partitioned into topics. Different `topic_seed`s give different topic splits of the
    same lexicon (the backbone pretraining uses one split, the quickstart task another)."""

    lexicon_size: int = 240
    n_topics: int = 24
    lexicon_seed: int = 0
    topic_seed: int = 1
    lexicon: list[str] = field(init=False, repr=False)
    topics: list[list[str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        lex = make_lexicon(self.lexicon_size, self.lexicon_seed)
        order = list(lex)
        random.Random(self.topic_seed).shuffle(order)
        per = len(order) // self.n_topics
        topics = [order[i * per : (i + 1) * per] for i in range(self.n_topics)]
        object.__setattr__(self, "lexicon", lex)
        object.__setattr__(self, "topics", topics)


def _draw_grade(rng: random.Random, probs: Sequence[float]) -> int:
    r = rng.random() * sum(probs)
    acc = 0.0
    for g, p in enumerate(probs):
        acc += p
        if r < acc:
            return g
    return len(probs) - 1


def make_split(
    n_queries: int,
    n_candidates: int,
    seed: int,
    *,
    world: World | None = None,
    query_words: int = 1,
    passage_len: tuple[int, int] = (4, 6),
    grade_probs: Sequence[float] = (0.5, 0.25, 0.15, 0.10),
    distractor_prob: float = 0.4,
    max_distractors: int = 2,
    retriever_grade_weight: float = 0.5,
    retriever_distractor_weight: float = 0.5,
    retriever_noise: float = 1.0,
    qid_prefix: str | None = None,
    query_vocabulary: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """`n_queries` canonical listwise rows (candidates in weak-retriever order).

    Per query: a topic and `query_words` distinct words from it (from `query_vocabulary` only, if given). Per candidate: grade g ~ grade_probs
    (at least one g >= 1 per query); the passage holds exactly g query-word tokens, with probability
    `distractor_prob` 1..max_distractors same-topic non-query words, and background words from other
    topics, shuffled, `passage_len` words in all (grown if g + distractors do not fit). Retriever score
    = w_g*g + w_d*#distractors + N(0, noise); display order = score descending. Teacher ranking =
    grade descending, ties broken by a seeded random key.
    """
    world = world or World()
    rng = random.Random(f"lrt-demo-split:{seed}")
    prefix = qid_prefix if qid_prefix is not None else f"s{seed}"
    n_grades = len(grade_probs)
    rows: list[dict[str, Any]] = []
    allowed = None if query_vocabulary is None else set(query_vocabulary)
    for qi in range(n_queries):
        while True:
            t = rng.randrange(len(world.topics))
            topic = world.topics[t]
            pool = topic if allowed is None else [w for w in topic if w in allowed]
            if len(pool) >= query_words:
                break
        qwords = rng.sample(pool, query_words)
        others = [w for j, tp in enumerate(world.topics) if j != t for w in tp]
        near = [w for w in topic if w not in qwords]
        grades = [_draw_grade(rng, grade_probs) for _ in range(n_candidates)]
        if max(grades) == 0:
            grades[rng.randrange(n_candidates)] = rng.randrange(1, n_grades)
        docs = []
        for j, g in enumerate(grades):
            nd = rng.randint(1, max_distractors) if rng.random() < distractor_prob else 0
            length = max(rng.randint(*passage_len), g + nd)
            words = [rng.choice(qwords) for _ in range(g)] + rng.sample(near, nd)
            words += [rng.choice(others) for _ in range(length - len(words))]
            rng.shuffle(words)
            score = (
                retriever_grade_weight * g + retriever_distractor_weight * nd + rng.gauss(0.0, retriever_noise)
            )
            tie = rng.random()
            docs.append({"docid": f"{prefix}q{qi}d{j}", "text": " ".join(words), "g": g, "score": score, "tie": tie})
        shown = sorted(docs, key=lambda d: -d["score"])
        teacher = sorted(docs, key=lambda d: (-d["g"], d["tie"]))
        rows.append(
            {
                "qid": f"{prefix}q{qi}",
                "query": " ".join(qwords),
                "candidates": [{"docid": d["docid"], "text": d["text"]} for d in shown],
                "ranking": [d["docid"] for d in teacher],
                "relevance": [float(d["g"]) for d in shown],
            }
        )
    return rows


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """One JSON object per line, keys in a stable order (so equal rows give equal bytes)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return p


def list_ndcg(grades_in_ranked_order: Sequence[float], k: int = 10) -> float:
    """nDCG@k with linear gain (= grade) and log2 discount; IDCG from the same list's true grades."""
    def dcg(gs: Sequence[float]) -> float:
        return sum(g / math.log2(i + 2) for i, g in enumerate(gs[:k]))

    ideal = dcg(sorted(grades_in_ranked_order, reverse=True))
    return dcg(grades_in_ranked_order) / ideal if ideal > 0 else 0.0
