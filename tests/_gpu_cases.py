"""The bodies of the GPU checks (tests/test_gpu_paths.py), written device-agnostic.

Each case builds lrt's real objects (Trainer from a generated recipe, Objective, Reranker, the export
CLI) on a model made from a config, runs them on whatever device the Trainer picks (CUDA when there
is one), and returns plain figures. The `gpu` tests call them on real-size presets and assert; the
CPU suite (tests/test_gpu_check_cpu.py) calls the same functions on tiny presets with the real
vocabulary, so a typo or an API change shows here, not first on a rare GPU slot.
"""
from __future__ import annotations

import gc as _gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from lrt.bench.throughput import ARCHS, DS_ZERO3, gpu_recipe

REPO = Path(__file__).resolve().parents[1]


def record(name: str, figures: dict[str, Any]) -> None:
    """Write a check's figures to $LRT_GPU_FIGURES/<name>.json (scripts/gpu_check.sh collects them
    into its summary), before the test asserts on them, so a failing check still reports numbers."""
    d = os.environ.get("LRT_GPU_FIGURES")
    if d:
        Path(d).mkdir(parents=True, exist_ok=True)
        Path(d, f"{name}.json").write_text(json.dumps(figures, indent=1, default=str), encoding="utf-8")


def free() -> None:
    _gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def peak_mb(fn: Callable[[], Any]) -> tuple[Any, float | None]:
    """(fn(), peak CUDA memory allocated during fn above what was allocated before, MB); None on CPU."""
    if not torch.cuda.is_available():
        return fn(), None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    return out, (torch.cuda.max_memory_allocated() - base) / 2**20


def _first_batch(trainer: Any) -> dict[str, torch.Tensor]:
    from lrt.train.data import batch_to

    return batch_to(trainer.batches.step(0)[0], trainer.env.device)


def probe_scores(trainer: Any) -> tuple[torch.dtype, torch.Tensor, dict[str, torch.Tensor]]:
    """What RerankModule.forward computes on step 0's batch (hidden dtype, [B, N] scores, loss terms)."""
    from lrt.scoring import decoder_and_head, full_precision, hidden_states

    batch = _first_batch(trainer)
    decoder, head = decoder_and_head(trainer.hf_model)
    with torch.no_grad(), trainer.autocast():
        h = hidden_states(decoder, batch)
        with full_precision(h):
            nums, scores = trainer.objective.numerators(h, batch, head.weight, getattr(head, "bias", None))
    return h.dtype, scores, nums


# ---- bf16 training step ----------------------------------------------------------------------------
def bf16_vs_fp32(work: Path, arch: str, seq: int = 1024) -> dict[str, Any]:
    """The same weights (fp32, and rounded to bf16) and the same first batch: one `train_step` each."""
    from lrt.train.loop import Trainer

    t32 = Trainer(gpu_recipe(work / "fp32", arch, seq=seq, precision="fp32"))
    t16 = Trainer(gpu_recipe(work / "bf16", arch, seq=seq, precision="bf16"))
    t16.hf_model.load_state_dict(t32.hf_model.state_dict())
    h_dtype, scores, nums = probe_scores(t16)
    rows_unique = [int(torch.unique(s).numel()) for s in scores]
    r32, r16 = t32.train_step(), t16.train_step()
    out = {
        "device": str(t16.env.device), "arch": arch, "seq": seq,
        "weight_dtype": str(next(t16.hf_model.parameters()).dtype), "hidden_dtype": str(h_dtype),
        "scores_dtype": str(scores.dtype), "loss_term_dtypes": {k: str(v.dtype) for k, v in nums.items()},
        "candidates": int(scores.shape[1]), "min_distinct_scores_per_list": min(rows_unique),
        "loss_fp32": r32["loss"], "loss_bf16": r16["loss"],
        "loss_rel_diff": abs(r16["loss"] - r32["loss"]) / abs(r32["loss"]),
        "terms_rel_diff": {k: abs(r16[k] - r32[k]) / max(abs(r32[k]), 1e-12) for k in r32 if k.startswith("loss/")},
        "train_mode": all(m.training for m in t16.module.modules()),
    }
    del t32, t16
    free()
    return out


# ---- attention implementations and padding ----------------------------------------------------------
def save_weights(work: Path, arch: str, seq: int = 1024, dtype: str = "bf16") -> str:
    """Random weights of the preset saved as a plain HF checkpoint (for paths that load `pretrained`)."""
    from lrt.modeling import load_model, load_tokenizer

    r = gpu_recipe(work / "init", arch, seq=seq, precision=dtype)
    tok = load_tokenizer(r)
    out = work / "weights"
    load_model(r, tok).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def attention_scores(work: Path, arch: str, impls: tuple[str, str] = ("sdpa", "flash_attention_2"),
                     n_lists: int = 8) -> dict[str, Any]:
    """First-token scores (`Reranker.score_windows`, 4 lists per batch of uneven lengths, so padding is
    real) of the same bf16 weights under two attention implementations, each with left and right padding."""
    from lrt.modeling import load_model, load_tokenizer
    from lrt.rerank import Reranker
    from lrt.testing.tiny import random_examples
    from lrt.train.data import prompt_template

    weights = save_weights(work, arch)
    examples = random_examples(n_lists, 20, seed=3)
    items = [(e.query, e.candidates) for e in examples]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    got: dict[str, list[torch.Tensor]] = {}
    used: dict[str, str] = {}
    for impl in impls:
        r = gpu_recipe(work / impl, arch, name_or_path=weights, attn=impl, examples=examples)
        tok = load_tokenizer(r)
        model = load_model(r, tok).to(dev).eval()
        used[impl] = model.config._attn_implementation
        for side in ("left", "right"):
            rr = Reranker(model, tok, prompt_template(r), window=20, stride=20, max_length=1024, batch_size=4,
                          padding_side=side)
            got[f"{impl}/{side}"] = rr.score_windows(items)
        del model
        free()
    lengths = [len(rr.encode_window(it).input_ids) for it in items]

    def diff(a: str, b: str) -> float:
        return max(float((x - y).abs().max()) for x, y in zip(got[a], got[b]))

    a, b = impls
    spread = float(torch.stack([s.std() for s in got[f"{a}/right"]]).mean())
    return {
        "device": dev, "arch": arch, "implementations_used": used, "prompt_lengths": [min(lengths), max(lengths)],
        "score_dtype": str(got[f"{a}/right"][0].dtype), "mean_score_std_within_list": spread,
        f"max_abs_diff_{a}_vs_{b}_left": diff(f"{a}/left", f"{b}/left"),
        f"max_abs_diff_{a}_vs_{b}_right": diff(f"{a}/right", f"{b}/right"),
        f"max_abs_diff_left_vs_right_{a}": diff(f"{a}/left", f"{a}/right"),
        f"max_abs_diff_left_vs_right_{b}": diff(f"{b}/left", f"{b}/right"),
        "same_order": all(torch.equal(x.argsort(descending=True), y.argsort(descending=True))
                          for x, y in zip(got[f"{a}/right"], got[f"{b}/right"])),
    }


# ---- gradient checkpointing memory --------------------------------------------------------------------
def checkpointing_memory(work: Path, arch: str, seqs: tuple[int, ...] = (4096, 16384)) -> dict[str, Any]:
    """One bf16 `train_step` per (seq, checkpointing off/on): peak CUDA memory above the loaded model,
    and the bytes autograd saves for backward (device-independent: lrt.bench.guard.SavedTensorBytes)."""
    from lrt.bench.guard import SavedTensorBytes
    from lrt.train.loop import Trainer

    out: dict[str, Any] = {"arch": arch, "device": None, "runs": []}
    for seq in seqs:
        for gc in (False, True):
            t = Trainer(gpu_recipe(work / f"s{seq}-gc{int(gc)}", arch, seq=seq, gc=gc, steps=2))
            params = {p.untyped_storage().data_ptr() for p in t.module.parameters()}
            with SavedTensorBytes(exclude=params) as saved:
                rec, mb = peak_mb(t.train_step)
            layer = t.hf_model.model.layers[0]
            out["device"] = str(t.env.device)
            out["runs"].append({"seq": seq, "grad_ckpt": gc, "tokens": int(t.batches.step(0)[0]["attention_mask"].sum()),
                                "peak_step_mb": mb, "saved_activation_mb": saved.nbytes / 2**20, "loss": rec["loss"],
                                "layer_checkpointed": bool(getattr(layer, "gradient_checkpointing", False))})
            del t
            free()
    return out


# ---- Liger fused linear cross-entropy vs lrt's chunked lm loss -----------------------------------------
def liger_vs_chunked(arch: str, targets: int = 2048, seq: int = 4096) -> dict[str, Any]:
    """lrt's Objective with `lm` kernel liger vs kernel torch on the same bf16 hidden states and LM head
    (the real vocabulary): loss, gradients of both, and the peak memory of each forward + backward."""
    from lrt.config import LossTerm
    from lrt.objective.objective import Objective

    spec = ARCHS[arch]
    V, H = spec["vocab_size"], spec["hidden_size"]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device="cpu").manual_seed(0)
    hidden0 = (torch.randn(1, seq, H, generator=g) * 2.0).to(dev, torch.bfloat16)
    weight0 = (torch.randn(V, H, generator=g) * 0.02).to(dev, torch.bfloat16)
    pos = torch.randperm(seq - 1, generator=g)[:targets].sort().values.to(dev)
    batch = {"lm_flat_pos": pos, "lm_targets": torch.randint(0, V, (targets,), generator=g).to(dev)}
    res: dict[str, Any] = {"device": dev, "arch": arch, "vocab": V, "hidden": H, "targets": targets}
    grads = {}
    for kernel in ("torch", "liger"):
        obj = Objective([LossTerm(name="lm", params={"kernel": kernel})])
        h = hidden0.clone().requires_grad_(True)
        w = weight0.clone().requires_grad_(True)
        used = obj._want_liger(obj.terms[0], None, h)

        def run() -> torch.Tensor:
            nums, _ = obj.numerators(h, batch, w, None)
            nums["lm"].backward()
            return nums["lm"].detach()

        loss, mb = peak_mb(run)
        grads[kernel] = (h.grad.float(), w.grad.float())
        res[kernel] = {"path_used": "liger" if used else "chunked", "loss_sum": float(loss), "loss_dtype": str(loss.dtype),
                       "peak_mb": mb}
        del h, w
        free()
    (hg_t, wg_t), (hg_l, wg_l) = grads["torch"], grads["liger"]
    res["loss_rel_diff"] = abs(res["liger"]["loss_sum"] - res["torch"]["loss_sum"]) / abs(res["torch"]["loss_sum"])
    res["grad_hidden_rel_diff"] = float((hg_l - hg_t).norm() / hg_t.norm())
    res["grad_weight_rel_diff"] = float((wg_l - wg_t).norm() / wg_t.norm())
    res["logits_mb_if_materialised"] = targets * V * 4 / 2**20
    return res


# ---- QLoRA: 4-bit step, adapter, merged export --------------------------------------------------------
def qlora_roundtrip(work: Path, arch: str, steps: int = 2) -> dict[str, Any]:
    """`Trainer.fit` on a 4-bit NF4 base with LoRA (bf16 compute), the adapter it saves, `lrt export`
    merging it into an unquantised reload, and the merged model reranking like base + adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lrt.cli import main as cli_main
    from lrt.rerank import Reranker
    from lrt.testing.tiny import random_examples
    from lrt.train.data import prompt_template
    from lrt.workflows.run import Run as Trainer  # fit() also exports RUN/final

    weights = save_weights(work, arch)
    examples = random_examples(8, 20, seed=5)
    r = gpu_recipe(work / "qlora", arch, name_or_path=weights, examples=examples, steps=steps, save_final=True, lr=2e-3,
                   lora={"r": 8, "alpha": 16, "dropout": 0.0}, quant={"bits": 4, "compute_dtype": "bfloat16"})
    t = Trainer(r)
    q = [m for m in t.hf_model.modules() if type(m).__name__ == "Linear4bit"]
    res_fit, mb = peak_mb(t.fit)
    final = Path(r.output_dir) / "final"
    merged = work / "merged"
    rc = cli_main(["export", r.output_dir, "--out", str(merged), "--dtype", "float32"])
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    items = [(e.query, e.candidates) for e in examples[:4]]
    tok, template = t.tok, prompt_template(r)

    def scores(model: Any) -> list[torch.Tensor]:
        if not any(type(m).__name__ == "Linear4bit" for m in model.modules()):  # k-bit weights stay where they loaded
            model.to(dev)
        model.eval()
        return Reranker(model, tok, template, window=20, stride=20, max_length=1024, batch_size=4).score_windows(items)

    trained = scores(t.hf_model)
    del t
    free()
    via_export = Reranker.from_pretrained(merged, device=dev, dtype="float32").score_windows(items) if rc == 0 else None
    base = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32)
    via_adapter = scores(PeftModel.from_pretrained(base, final / "adapter"))
    plain = scores(AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32))

    def diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        return max(float((x - y).abs().max()) for x, y in zip(a, b))

    return {
        "device": dev, "arch": arch, "linear4bit_modules": len(q),
        "linear4bit_device": str(q[0].weight.device) if q else None, "losses": [h["loss"] for h in res_fit.history],
        "peak_fit_mb": mb, "adapter_saved": (final / "adapter" / "adapter_model.safetensors").exists(),
        "not_merged_note": (final / "NOT_MERGED.txt").exists(), "export_rc": rc,
        "merged_vs_adapter_max_abs": diff(via_export, via_adapter) if via_export else None,
        "merged_vs_adapter_same_order": (all(torch.equal(x.argsort(descending=True), y.argsort(descending=True))
                                             for x, y in zip(via_export, via_adapter)) if via_export else None),
        "merged_vs_4bit_trained_max_abs": diff(via_export, trained) if via_export else None,
        "adapter_vs_untrained_base_max_abs": diff(via_adapter, plain),
    }


# ---- lrt bench train-step (naive vs lrt vs floor) ------------------------------------------------------
def bench_argv(arch: str, seq: int, settings: str = "first,fullrank", steps: int = 3) -> list[str]:
    """`lrt bench train-step` arguments for a preset's shape (Llama body, the preset's real vocabulary)."""
    s = ARCHS[arch]
    return ["bench", "train-step", "--settings", settings, "--grad-ckpt", "off", "--precision", "bf16",
            "--vocab", str(s["vocab_size"]), "--hidden", str(s["hidden_size"]), "--layers", str(s["num_hidden_layers"]),
            "--heads", str(s["num_attention_heads"]), "--intermediate", str(s["intermediate_size"]),
            "--seq", str(seq), "--steps", str(steps), "--warmup", "1", "--no-table"]


def run_bench(argv: list[str], timeout: float) -> list[dict[str, Any]]:
    """Run `lrt bench ...` as the user would (a subprocess of the CLI); its JSON records."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "lrt.cli", *argv], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"lrt {' '.join(argv)} exited {p.returncode}:\n{p.stderr[-4000:]}")
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


# ---- DeepSpeed ZeRO-3 on one GPU ------------------------------------------------------------------------
def zero3_recipe(work: Path, arch: str, weights: str, steps: int = 2) -> Any:
    """lrt's shipped ZeRO-3 JSON on one process, bf16, from saved weights; every step logged."""
    return gpu_recipe(work, arch, name_or_path=weights, steps=steps, deepspeed=DS_ZERO3, log_every=1)


def run_train_cli(recipe: Any, timeout: float) -> tuple[subprocess.CompletedProcess, list[dict[str, Any]]]:
    """`lrt train RECIPE` in a fresh process (DeepSpeed sets up a process group), and metrics.jsonl."""
    from lrt.config import dump_recipe

    path = Path(recipe.output_dir).parent / "recipe.yaml"
    dump_recipe(recipe, path)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cuda"  # tests/conftest.py defaults it to cpu for the CPU suite
    p = subprocess.run([sys.executable, "-m", "lrt.cli", "train", str(path)], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=timeout)
    metrics = Path(recipe.output_dir) / "metrics.jsonl"
    recs = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    return p, recs


def fused_adam_in_subprocess(timeout: float) -> dict[str, Any]:
    """fused_adam_vs_torch in a fresh process with DS_ACCELERATOR=cuda: DeepSpeed fixes its accelerator
    at first import, and this pytest process may already have imported it for the CPU."""
    env = dict(os.environ, DS_ACCELERATOR="cuda", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    code = "import json, _gpu_cases as c; print(json.dumps(c.fused_adam_vs_torch()))"
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"FusedAdam check exited {p.returncode}:\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def fused_adam_vs_torch(n: int = 1 << 20, steps: int = 3) -> dict[str, Any]:
    """DeepSpeed's FusedAdam (its CUDA op, JIT-built) against torch AdamW on the same parameters and
    gradients. lrt hands DeepSpeed a torch AdamW (lrt.train.loop.build_optimizer), so this checks the
    fused optimizer a DeepSpeed `optimizer` block would select, on this machine's toolchain."""
    from deepspeed.ops.adam import FusedAdam

    g = torch.Generator(device="cpu").manual_seed(0)
    p0 = torch.randn(n, generator=g)
    grads = [torch.randn(n, generator=g) for _ in range(steps)]
    outs = []
    for make in (lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01),
                 lambda ps: FusedAdam(ps, lr=1e-3, weight_decay=0.01, adam_w_mode=True)):
        p = torch.nn.Parameter(p0.clone().cuda())
        opt = make([p])
        for gr in grads:
            p.grad = gr.cuda()
            opt.step()
        outs.append(p.detach().cpu())
    return {"max_abs_diff": float((outs[0] - outs[1]).abs().max()), "moved": float((outs[0] - p0).abs().max())}
