"""Training data for the pointwise family: every list encoded as its pair sequences (the module DDP
wraps is lrt.objective.pointwise.PointwiseModule; the template lrt.families.pointwise).

The pair rows are encoded in memory (the tokenised cache stores listwise rows only).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from lrt.config import Recipe, resolve_path
from lrt.data.pointwise import GroupRows, encode_group, yes_no_ids
from lrt.families.pointwise import pointwise_template  # noqa: F401  (re-exported)
from lrt.objective.objective import Objective


def prepare_pointwise_data(r: Recipe, env: Any, objective: Objective) -> Any:
    """Load the splits, the tokenizer and the answer ids; encode every training list's pairs."""
    from lrt.data.schema import load_examples
    from lrt.modeling import load_tokenizer
    from lrt.progress import track
    from lrt.train.data import TrainData

    t0 = time.perf_counter()
    template = pointwise_template(r)

    def load(src: str) -> list:
        return load_examples(resolve_path(src), on_invalid=r.data.on_invalid, split=r.data.split, limit=r.data.limit)[0]

    train = load(r.data.train)
    eval_src = r.eval.data or r.data.eval
    evals = load(eval_src) if eval_src else []
    from lrt.train.data import check_teacher_scores

    check_teacher_scores(r, objective, train)
    if r.eval.max_queries:
        evals = evals[: r.eval.max_queries]
    tok = load_tokenizer(r, n_identifiers=0)
    yes_no_ids(tok, template)  # fail fast on a multi-token answer word
    t1 = time.perf_counter()
    show = r.log.progress and env.is_main
    rows = GroupRows(encode_group(tok, template, ex, r.data.max_length, r.data.window, i)
            for i, ex in enumerate(track(train, "encode", unit="list", enabled=show, leave=False)))
    lengths = np.asarray([x["length"] for x in rows], dtype=np.int64)
    return TrainData(train, evals, tok, template, None, rows, lengths,  # type: ignore[arg-type]
                     seconds={"load": t1 - t0, "encode": time.perf_counter() - t1})
