"""What a training run prints: the start-of-run summary and one line per evaluation.

Why: a user should see before the first step what is about to happen (model size, how long the
lists are and how many were cut to fit, the global batch, the backend) and see evaluation results
when they happen, against the initial order and the best so far, without opening metrics.jsonl.
Everything goes to stderr (stdout stays for results a script may parse).
"""
from __future__ import annotations

import sys
from typing import Any, Sequence

from lrt.progress import is_tty


def emit(text: str) -> None:
    """Print above any live tqdm bar (on a terminal) or as plain lines (in a log file)."""
    if is_tty():
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)


def count_params(module: Any) -> tuple[int, int]:
    """(trainable, total) parameters; ZeRO-3 partitions report their full size via `ds_numel`."""
    trainable = total = 0
    for p in module.parameters():
        n = int(getattr(p, "ds_numel", 0) or p.numel())
        if getattr(p, "quant_storage", None) is not None or type(p).__name__ == "Params4bit":
            n *= 2  # 4-bit weights pack two values per byte-sized element
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def _pct(xs: Sequence[int], q: float) -> int:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))] if s else 0


def list_stats(rows: Sequence[dict[str, Any]], max_length: int) -> dict[str, int]:
    """Lists, tokens per list (p50, p95, max) and how many were cut to fit data.max_length."""
    if hasattr(rows, "column"):  # the tokenised cache (lrt.data.cache.EncodedRows): two columns, not every row
        lens, cut = [int(x) for x in rows.column("length")], int(sum(bool(x) for x in rows.column("truncated")))
    else:
        lens = [len(r["input_ids"]) for r in rows]
        cut = sum(bool(r.get("truncated")) for r in rows)
    return {"lists": len(rows), "tokens_p50": _pct(lens, 50), "tokens_p95": _pct(lens, 95),
            "tokens_max": max(lens, default=0), "truncated": cut, "max_length": max_length}


def _human(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _padding(p: dict[str, Any]) -> str:
    """Padded share of token slots in epoch 0's micro-batches, without and with length grouping."""
    if p.get("ungrouped") is None:
        return "unknown"
    before = f"{100 * p['ungrouped']:.1f}% of token slots"
    if not p.get("grouped"):
        return before + " (length grouping off: data.group_by_length)"
    return before + f" without length grouping -> {100 * p['with_grouping']:.1f}% with it"


def format_summary(s: dict[str, Any]) -> str:
    tr, tot = s["trainable_params"], s["total_params"]
    ls = s["lists"]
    rows = [
        ("model", f"{s['model']}" + (f" + LoRA r={s['lora_r']}" if s.get("lora_r") else "")),
        ("parameters", f"{_human(tr)} trainable of {_human(tot)} ({100 * tr / max(tot, 1):.2f}%)"),
        ("objective", s["objective"]),
        ("train lists", f"{ls['lists']}; tokens per list p50 {ls['tokens_p50']}, p95 {ls['tokens_p95']}, "
                        f"max {ls['tokens_max']} (max_length {ls['max_length']}); {ls['truncated']} cut to fit"),
        ("eval queries", str(s["eval_queries"]) + (f", every {s['eval_every']} steps" if s.get("eval_every") else "")),
        ("batch", f"global {s['global_batch']} lists = {s['per_device']} per device x {s['grad_accum']} accum "
                  f"x {s['world_size']} processes"),
        *([("padding", _padding(s["padding"]))] if s.get("padding") else []),
        ("steps", f"{s['steps']} ({s['epochs']:.2f} epochs of {s['steps_per_epoch']} steps)"
                  + (f", resuming at {s['start_step']}" if s.get("start_step") else "")),
        ("precision", f"{s['precision']}, {s['dtype']} weights"),
        ("backend", f"{s['backend']}" + (f" ZeRO-{s['zero_stage']}" if s.get("zero_stage") else "")
                    + f", world size {s['world_size']}, device {s['device']}"),
        ("trackers", ", ".join(s["trackers"]) or "none (metrics.jsonl only)"),
        ("output", s["output_dir"]),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(["lrt run"] + [f"  {k:<{w}}  {v}" for k, v in rows])


def ndcg_keys(res: dict[str, Any]) -> tuple[str | None, str | None]:
    """(model metric key, initial-order key): `eval/nDCG@10` with full qrels, or a variant such as
    `eval/nDCG@10_candidates` when only candidate grades exist."""
    keys = [k for k in res if k.startswith("eval/nDCG@10")]
    main = next((k for k in ("eval/nDCG@10", "eval/nDCG@10_candidates", "eval/nDCG@10_teacher") if k in res),
                keys[0] if keys else None)
    if main is None:
        return None, None
    init = main.replace("eval/", "eval/initial_", 1)
    return main, init if init in res else None


def format_eval(res: dict[str, Any], best: dict[str, Any] | None) -> str:
    """`eval step 40: nDCG@10 0.4123 (initial order 0.3800, +0.0323; best 0.4200 at step 20) on 43 queries`."""
    main, init = ndcg_keys(res)
    if main is None:
        return f"eval step {res.get('step')}: {res}"
    name = main.removeprefix("eval/")
    v = res[main]
    parts = []
    if init is not None:
        parts.append(f"initial order {res[init]:.4f}, {v - res[init]:+.4f}")
    if best is not None and best.get(main) is not None:
        parts.append(f"best {best[main]:.4f} at step {best.get('step')}")
    q = f" on {res['eval/queries']} queries" if "eval/queries" in res else ""
    return f"eval step {res.get('step')}: {name} {v:.4f}" + (f" ({'; '.join(parts)})" if parts else "") + q
