"""What `lrt rerank` prints after a run: what was done (in windows, or in pairs for a pair ranker),
generate's format accuracy, the openai logprob path, truncation per passage, and the first-stage-
order diagnostic (warned about when nearly every query kept its input order)."""
from __future__ import annotations

import logging
from typing import Any

from lrt.ranking import FIRST_STAGE_WARN

log = logging.getLogger("lrt")
FIRST_STAGE_MIN_QUERIES = 10  # fewer compared queries say too little to warn about


def passage_line(st: dict[str, Any]) -> str | None:
    """`passages: 4540; tokens p50 61, p95 140; 57.8% cut at max_passage_tokens=48; ...`."""
    if not st.get("passages"):
        return None
    unit = st.get("unit", "window")
    line = (f"passages: {st['passages']}; tokens p50 {st['passage_tokens_p50']}, p95 {st['passage_tokens_p95']}; "
            f"{100 * st['passages_cut'] / st['passages']:.1f}% cut at max_passage_tokens={st['max_passage_tokens']}")
    if st.get("windows_cut"):
        line += f"; {st['windows_cut']} {unit}s cut further to fit max_length"
    return line


def first_stage_line(st: dict[str, Any]) -> str | None:
    n = st.get("first_stage_queries") or 0
    if not n:
        return None
    return (f"first-stage order: {st['first_stage_same']}/{n} queries ({100 * st['first_stage_same'] / n:.1f}%) kept "
            f"their input top-{st['first_stage_k']} order")


def print_summary(st: dict[str, Any], *, mode: str, backend: str, top_k: int, window: int, stride: int, nproc: int,
                  out: str, logprobs: int | None, queries: int) -> None:
    """Print the run's summary lines (stdout) and its warnings (the lrt logger)."""
    n = max(1, queries)
    procs = f", {nproc} processes" if nproc > 1 else ""
    unit = st.get("unit", "window")
    how = f"window {window}, stride {stride}" if unit == "window" else "one sequence per query-passage pair"
    print(f"reranked {queries} queries (mode {mode}, backend {backend}, top-{top_k}, {how}{procs}) in "
          f"{st['seconds']:.1f} s ({1000 * st['seconds'] / n:.0f} ms/query, {st['windows']} {unit}s); wrote {out}")
    if st.get("valid_share") is not None:
        print(f"generate: {st['valid']}/{st['windows']} outputs were valid permutations ({100 * st['valid_share']:.1f}%); "
              f"repaired: {st['duplicates']} duplicate, {st['out_of_range']} out-of-range, {st['missing']} missing "
              "identifiers")
    if st.get("logprob_path") == "token_ids":
        print("openai: identifier logprobs by token id (logprob_token_ids): every identifier scored, "
              f"{st['missing_identifiers']} missing")
    elif st.get("logprob_path") == "top_k":
        print(f"openai: the server has no logprob_token_ids: identifiers scored from the top-{st['top_logprobs']} "
              f"logprobs by token id")
    if st.get("missing_identifiers"):
        k = st.get("top_logprobs") or logprobs
        print(f"openai: {st['missing_identifiers']} identifiers missing from the top-{k} logprobs in "
              f"{st['windows_with_missing']}/{st['windows']} windows (scored below the returned ones, kept in their "
              "current order); raise --logprobs (and the server's --max-logprobs) to score them all")
    for line in (passage_line(st), first_stage_line(st)):
        if line:
            print(line)
    share = st.get("first_stage_share")
    if share is not None and share >= FIRST_STAGE_WARN and st["first_stage_queries"] >= FIRST_STAGE_MIN_QUERIES:
        log.warning("%d of %d queries (%.1f%%) kept their first-stage top-%d order: the model mostly reproduces the "
                    "input ranking (untrained, or trained on lists it could not tell apart); compare with the first "
                    "stage: lrt eval --baseline RUN", st["first_stage_same"], st["first_stage_queries"], 100 * share,
                    st["first_stage_k"])
