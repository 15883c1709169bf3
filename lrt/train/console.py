"""What a training run prints: the start-of-run summary and one line per evaluation.

Why: a user should see before the first step what is about to happen (model size, how long the
lists are and how many were cut to fit, the global batch, the backend) and see evaluation results
when they happen, against the initial order and the best so far, without opening metrics.jsonl.
Everything goes to stderr (stdout stays for results a script may parse).
"""
from __future__ import annotations

import json
import sys
from typing import Any, Sequence

from lrt.families import get as family
from lrt.progress import is_tty
from lrt.train.evaluation import FIRST_STAGE_WARN, headline_keys

PASSAGE_SAMPLE = 20000  # passages tokenised for the summary's truncation figures (the first lists')


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


def pair_stats(rows: Sequence[dict[str, Any]], max_length: int) -> dict[str, int]:
    """Pointwise rows (one group of pair sequences per list): pairs, tokens per pair (p50, p95, max)
    and how many pairs were cut to fit data.max_length (the budget of one pair)."""
    lens = [len(p) for r in rows for p in r["pairs"]]
    return {"lists": len(rows), "pairs": len(lens), "tokens_p50": _pct(lens, 50), "tokens_p95": _pct(lens, 95),
            "tokens_max": max(lens, default=0), "truncated": int(sum(r.get("pairs_cut", 0) for r in rows)),
            "max_length": max_length}


def passage_stats(tok: Any, examples: Sequence[Any], max_passage_tokens: int, window: int | None,
                  sample: int = PASSAGE_SAMPLE) -> dict[str, Any]:
    """Truncation per passage (issue 23): of the training lists' passages (the first `sample` of them,
    tokenised as the prompt encodes a passage), tokens p50/p95/max and the share longer than
    prompt.max_passage_tokens, i.e. cut. Lists cut further to fit data.max_length are counted apart."""
    from lrt.data.prompts import passage_text

    texts: list[str] = []
    total = 0
    for ex in examples:
        cands = ex.candidates[:window] if window else ex.candidates
        total += len(cands)
        if len(texts) < sample:
            texts.extend(passage_text(c.text, c.title) for c in cands[: sample - len(texts)])
    lens = [len(x) for x in tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]] if texts else []
    cut = sum(n > max_passage_tokens for n in lens)
    return {"passages": total, "sampled": len(lens), "tokens_p50": _pct(lens, 50), "tokens_p95": _pct(lens, 95),
            "tokens_max": max(lens, default=0), "cut": cut, "cut_share": cut / len(lens) if lens else 0.0,
            "max_passage_tokens": max_passage_tokens}


def run_summary(t: Any) -> dict[str, Any]:
    """What the start-of-run summary says, as data (also written to run_summary.json)."""
    from lrt.train.zero import zero_stage

    r = t.r
    trainable, total = count_params(t.module.model)
    spe = t.sampler.steps_per_epoch
    s: dict[str, Any] = {
        "model": r.model.name_or_path, "lora_r": r.model.lora.r if r.model.lora else None,
        "trainable_params": trainable, "total_params": total, "scoring": t.family.name,
        "objective": " + ".join(f"{x.weight:g} x {x.name}" for x in r.loss),
        "lists": list_stats(t.rows, r.data.max_length), "eval_queries": len(t.eval_examples),
        "eval_every": r.eval.every, "global_batch": t.sampler.global_batch,
        "per_device": r.train.per_device_batch_size, "grad_accum": r.train.grad_accum,
        "world_size": t.env.world, "steps": t.total_steps, "steps_per_epoch": spe,
        "epochs": t.total_steps / max(spe, 1), "start_step": t.step, "precision": r.train.precision,
        "dtype": r.model.dtype, "backend": t._backend_name(), "zero_stage": zero_stage(t.ds_cfg),
        "device": str(t.env.device), "trackers": t.metrics.active, "output_dir": str(t.out),
    }
    if t.family.pairs:
        s["pairs"] = pair_stats(t.rows, r.data.max_length)
    s["passages"] = passage_stats(t.tok, t.train_examples, r.prompt.max_passage_tokens, r.data.window)
    pad = getattr(t.sampler, "padding_fraction", None)
    if pad is not None and r.train.per_device_batch_size > 1:  # one list per micro-batch pads nothing
        s["padding"] = {"grouped": bool(t.sampler.grouped), "ungrouped": pad(grouped=False),
                        "with_grouping": pad(grouped=True)}
    return s


def print_summary(t: Any) -> dict[str, Any]:
    """The start-of-run summary (rank 0): printed, and saved as output_dir/run_summary.json."""
    s = run_summary(t)
    emit(format_summary(s))
    (t.out / "run_summary.json").write_text(json.dumps(s, indent=1), encoding="utf-8")
    return s


def report_eval(res: dict[str, Any], history: Sequence[dict[str, Any]]) -> None:
    """One evaluation line with the initial order and the best so far; a warning when the model
    keeps reproducing the first-stage order after training started."""
    key, _ = headline_keys(res)
    best = max((h for h in history if key and isinstance(h.get(key), (int, float))), key=lambda h: h[key],
               default=None)
    emit(format_eval(res, best))
    share = res.get("eval/first_stage_order")
    if isinstance(share, float) and share >= FIRST_STAGE_WARN and res.get("step", 0) > 0:
        emit(f"warning: step {res.get('step')}: {100 * share:.0f}% of eval queries keep the first-stage order in "
             "their top 10: the model may only reproduce its input order (check the teacher labels, the "
             "learning rate and whether the model can read the data: `lrt validate`)")


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
    rows = [
        ("model", f"{s['model']}" + (f" + LoRA r={s['lora_r']}" if s.get("lora_r") else "")),
        ("parameters", f"{_human(tr)} trainable of {_human(tot)} ({100 * tr / max(tot, 1):.2f}%)"),
        ("objective", s["objective"]),
        *family(s.get("scoring", "first_token")).summary_rows(s),
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


ndcg_keys = headline_keys  # the one definition (lrt.train.evaluation); the name plots import


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
    fs = res.get("eval/first_stage_order")
    q += f"; top 10 = first-stage order for {100 * fs:.0f}%" if isinstance(fs, float) else ""
    return f"eval step {res.get('step')}: {name} {v:.4f}" + (f" ({'; '.join(parts)})" if parts else "") + q
