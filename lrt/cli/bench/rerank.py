"""`lrt bench rerank`: reranking latency of the three modes (and the openai backend) (`lrt.bench.rerank`)."""
from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    from lrt.bench import rerank as b

    d = b.Options()
    p = argparse.ArgumentParser(prog="lrt bench rerank", description=b.__doc__.split("\n\n")[0])
    p.add_argument("--model", default=d.model, help="exported model dir (default: a random tiny Llama)")
    p.add_argument("--queries", type=int, default=d.queries)
    p.add_argument("--candidates", type=int, default=d.candidates)
    p.add_argument("--window", type=int, default=d.window)
    p.add_argument("--stride", type=int, default=d.stride)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--passage-tokens", type=int, default=d.passage_tokens,
                   help="synthetic passages are cut to this many tokens")
    p.add_argument("--hidden", type=int, default=d.hidden, help="tiny model width")
    p.add_argument("--layers", type=int, default=d.layers, help="tiny model depth")
    p.add_argument("--modes", default=d.modes)
    p.add_argument("--backends", default=d.backends,
                   help="hf and/or openai (the loopback server running the same model; modes first_token, generate)")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="openai backend: parallel requests")
    p.add_argument("--base-url", default=d.base_url,
                   help="openai backend: a real server's API root (e.g. vLLM at http://127.0.0.1:8000/v1) serving "
                        "--model, instead of the loopback server")
    p.add_argument("--served-model", default=d.served_model, help="with --base-url: the served model name")
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--device", default=d.device)
    p.add_argument("--seed", type=int, default=d.seed)
    return b.run(b.Options(**vars(p.parse_args(argv))))
