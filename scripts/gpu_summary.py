"""scripts/gpu_summary.py OUT_DIR [TOTAL_S]: gather what scripts/gpu_check.sh wrote (parts/*.json,
junit.xml, figures/*.json, probe.json) into OUT_DIR/summary.json and OUT_DIR/summary.md.

Only measured numbers go in: a figure whose check did not run is listed as "not yet measured".
"""
from __future__ import annotations

import json
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def load(p: Path) -> Any:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def tests(junit: Path) -> list[dict[str, str]]:
    """One row per test case of the junit report: outcome and skip reason / failure message."""
    if not junit.exists():
        return []
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        row = {"test": case.get("name", "?"), "outcome": "passed", "seconds": case.get("time", ""), "detail": ""}
        for tag in ("skipped", "failure", "error"):
            el = case.find(tag)
            if el is not None:
                row["outcome"] = {"skipped": "skipped", "failure": "failed", "error": "error"}[tag]
                row["detail"] = " ".join((el.get("message") or el.text or "").split())[:300]
        out.append(row)
    return out


def fmt(x: Any, spec: str = ".3g") -> str:
    return "not yet measured" if x is None else (format(x, spec) if isinstance(x, (int, float)) else str(x))


def figure_lines(fig: dict[str, Any]) -> list[str]:
    """Markdown for each figure a check recorded; one table with every figure's place, measured or not."""
    L: list[str] = []
    tp = fig.get("throughput")
    L += ["## Throughput: lrt's FIRST training step", "",
          "| model (config, random init) | seq x lists | attention | tokens/s/GPU | MFU | peak the MFU divides by | device memory |",
          "|---|---|---|---|---|---|---|"]
    if tp:
        L.append(f"| {tp['arch']} ({tp['params'] / 1e9:.2f}B) | {tp['seq']} x {tp['batch']} | {tp['attn_implementation']} | "
                 f"{tp['tokens_per_s_per_gpu']:,.0f} | {tp['mfu_pct']:.1f} % | {tp['peak_tflops']} TFLOP/s bf16 dense | "
                 f"{fmt(tp.get('cuda_peak_gib'))} GiB |")
    else:
        L.append("| qwen2-1.5b | 4096 x 1 | | not yet measured | not yet measured | 989.5 TFLOP/s bf16 dense | |")
    L += ["| torchtitan Llama 3.1 8B, 8xH100, FSDP (published) | 8192 | | 5,762 | 33-39 % | 989 TFLOP/s | |", ""]
    b = fig.get("bench_train_step")
    L += ["## lrt bench train-step on CUDA (naive full logits vs lrt vs floor)", "",
          "| setting | lrt / naive memory | lrt / naive tokens/s | lrt / floor memory | lrt / floor time | lrt tokens/s |",
          "|---|---|---|---|---|---|"]
    for r in (b or {}).get("records", []) or [{}]:
        L.append(f"| {r.get('setting', '-')} | {fmt(r.get('mem_ratio'))} | {fmt(r.get('speed_ratio'))} | "
                 f"{fmt(r.get('mem_ratio_floor'))} | {fmt(r.get('time_ratio_floor'))} | {fmt(r.get('lrt_tokens_per_s'), '.0f')} |")
    g = fig.get("grad_ckpt_memory")
    L += ["", "## Gradient checkpointing: peak CUDA memory of one bf16 step (MB above the loaded model)", "",
          "| tokens | off | on |", "|---|---|---|"]
    runs = {(x["seq"], x["grad_ckpt"]): x for x in (g or {}).get("runs", [])}
    for seq in (4096, 16384):
        L.append(f"| {seq} | {fmt(runs.get((seq, False), {}).get('peak_step_mb'), '.0f')} | "
                 f"{fmt(runs.get((seq, True), {}).get('peak_step_mb'), '.0f')} |")
    lg = fig.get("liger_vs_chunked") or {}
    L += ["", "## Other checks", "", "| check | figure |", "|---|---|",
          f"| bf16 vs fp32 step: loss relative difference | {fmt((fig.get('bf16_step') or {}).get('loss_rel_diff'))} |",
          f"| flash_attention_2 vs sdpa: max abs score diff (right padding) | "
          f"{fmt((fig.get('flash_vs_sdpa') or {}).get('max_abs_diff_sdpa_vs_flash_attention_2_right'))} |",
          f"| Liger vs chunked lm loss: loss rel. diff / peak MB liger / peak MB chunked | {fmt(lg.get('loss_rel_diff'))} / "
          f"{fmt((lg.get('liger') or {}).get('peak_mb'), '.0f')} / {fmt((lg.get('torch') or {}).get('peak_mb'), '.0f')} |",
          f"| QLoRA: merged export vs base + adapter, max abs score diff | "
          f"{fmt((fig.get('qlora') or {}).get('merged_vs_adapter_max_abs'))} |",
          f"| ZeRO-3 (1 GPU): step-1 losses / FusedAdam vs torch AdamW max abs diff | "
          f"{fmt((fig.get('deepspeed_zero3') or {}).get('losses'))} / "
          f"{fmt(((fig.get('deepspeed_zero3') or {}).get('fused_adam') or {}).get('max_abs_diff'))} |", ""]
    return L


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    total = int(argv[1]) if len(argv) > 1 else None
    probe = load(out / "probe.json") or {}
    parts = [load(p) for p in sorted((out / "parts").glob("*.json"), key=lambda p: p.stat().st_mtime)]
    figures = {p.stem: load(p) for p in sorted((out / "figures").glob("*.json"))}
    rows = tests(out / "junit.xml")
    cuda = bool(probe.get("cuda"))
    summary = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "cuda": cuda, "probe": probe, "total_s": total,
               "parts": parts, "tests": rows, "figures": figures,
               "verdict": ("no CUDA device: every CUDA part skipped" if not cuda else
                           "passed" if all(p and p.get("status") == "ok" for p in parts) else "failed")}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    md = ["# lrt GPU check", "",
          f"{summary['date']} UTC; {probe.get('gpu') or 'no GPU'}; torch {probe.get('torch', '?')} (CUDA build "
          f"{probe.get('cuda_build') or 'none'}); total {total if total is not None else '?'} s; "
          f"verdict: **{summary['verdict']}**.", ""]
    if not cuda:
        md += ["**No CUDA device**: nothing below was measured; every figure reads \"not yet measured\".", ""]
    md += ["## Parts", "", "| part | status | seconds | note |", "|---|---|---|---|"]
    md += [f"| {p['part']} | {p['status']} | {p['seconds']} | {str(p.get('note', '')).replace('|', '/')} |" for p in parts if p]
    md += ["", "## gpu tests", "", "| test | outcome | seconds | reason / message |", "|---|---|---|---|"]
    md += [f"| {r['test']} | {r['outcome']} | {r['seconds']} | {r['detail'].replace('|', '/')} |" for r in rows]
    md += [""] + figure_lines(figures)
    md += ["Never run by this script: multi-GPU NCCL (DDP, ZeRO across GPUs), multi-node, the vLLM GPU server.", ""]
    (out / "summary.md").write_text("\n".join(md), encoding="utf-8")
    print(f"wrote {out / 'summary.json'} and {out / 'summary.md'} ({summary['verdict']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
