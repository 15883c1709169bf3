"""Rerank held-out queries with an lrt export through a real vLLM server and in process; compare.

    LRT_VLLM_PYTHON=.venv-vllm/bin/python python scripts/vllm_acceptance.py EXPORT EVAL.jsonl --queries 100

EVAL.jsonl: canonical listwise rows (e.g. the quickstart's held-out split). For each mode (first_token,
full) it runs `lrt rerank --backend hf` and `lrt rerank --backend openai` against one vLLM server
(started here on 127.0.0.1, stopped at the end) and prints a JSON line: orderings equal, the largest
score difference, missing identifiers, the logprob path, requests per query, ms/query (CPU). Run it in a
CPU slot (`/work/bin/cpu-run`) on a shared box.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from lrt.cli import main as lrt_main
from lrt.data.schema import load_examples
from lrt.io.trec import read_run
from lrt.testing.vllm_server import VLLMServer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("export")
    p.add_argument("eval")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--modes", default="first_token,full")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--log", default=None, help="server log (default: in the work directory)")
    p.add_argument("--bench", action="store_true",
                   help="also `lrt bench rerank --backends hf,openai --base-url ...` (first_token, 20 candidates)")
    a = p.parse_args(argv)
    rows, _ = load_examples(a.eval, limit=a.queries)
    work = Path(tempfile.mkdtemp(prefix="lrt-vllm-acc-"))
    (work / "run.trec").write_text("".join(f"{e.qid} Q0 {c.docid} {r} {1000 - r} first\n"
                                           for e in rows for r, c in enumerate(e.candidates, 1)))
    (work / "topics.tsv").write_text("".join(f"{e.qid}\t{e.query}\n" for e in rows))
    docs = {c.docid: c.text for e in rows for c in e.candidates}
    (work / "corpus.tsv").write_text("".join(f"{d}\t{t}\n" for d, t in docs.items()))
    inputs = ["--run", str(work / "run.trec"), "--queries", str(work / "topics.tsv"), "--corpus", str(work / "corpus.tsv")]
    with VLLMServer(a.export, "lrt-acc", log=a.log or work / "server.log", max_model_len=a.max_model_len,
                    args=["--max-logprobs", "100"]) as srv:
        print(json.dumps({"server_startup_s": round(srv.startup_s or 0, 1), "queries": len(rows)}), flush=True)
        for mode in a.modes.split(","):
            res = {}
            for be in ("hf", "openai"):
                extra = (["--backend", "openai", "--base-url", srv.url, "--model", srv.name, "--export", a.export]
                         if be == "openai" else ["--model", a.export, "--device", "cpu"])
                t0 = time.perf_counter()
                assert lrt_main(["rerank", *extra, *inputs, "--mode", mode, "--out", str(work / f"{mode}-{be}.trec"),
                                 "--stats", str(work / f"{mode}-{be}.json")]) == 0
                res[be] = (read_run(work / f"{mode}-{be}.trec"), json.loads((work / f"{mode}-{be}.json").read_text()),
                           time.perf_counter() - t0)
            (hf, sh, _), (oa, so, _) = res["hf"], res["openai"]
            equal = sum([d for d, _ in hf[q]] == [d for d, _ in oa[q]] for q in hf)
            diff = max(abs(x - y) for q in hf for (_, x), (_, y) in zip(hf[q], oa[q]))
            print(json.dumps({"mode": mode, "orderings_equal": f"{equal}/{len(hf)}", "max_score_diff": diff,
                              "missing_identifiers": so["missing_identifiers"],
                              "windows_with_missing": so["windows_with_missing"], "logprob_path": so["logprob_path"],
                              "requests_per_query": so["batches"] / max(1, so["queries"]),
                              "ms_per_query_cpu": {"hf": round(1000 * sh["seconds"] / sh["queries"], 2),
                                                   "openai": round(1000 * so["seconds"] / so["queries"], 2)}}),
                  flush=True)
        if a.bench:
            assert lrt_main(["bench", "rerank", "--model", a.export, "--backends", "hf,openai", "--base-url", srv.url,
                             "--served-model", srv.name, "--modes", "first_token", "--queries", "20",
                             "--candidates", "20", "--window", "20", "--stride", "10", "--passage-tokens", "8",
                             "--device", "cpu"]) == 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
