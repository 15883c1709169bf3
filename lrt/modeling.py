"""Load the tokenizer and model a recipe asks for: dtype, attention, special identifiers, LoRA/QLoRA.

GPU paths (bf16, flash-attention-2, bitsandbytes 4-bit) are selected by the recipe and fall back
with a clear message on CPU instead of crashing deep inside transformers.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from lrt.config import Recipe, resolve_path
from lrt.data.prompts import special_tokens
from lrt.errors import LrtError

log = logging.getLogger("lrt")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(r: Recipe, n_identifiers: int | None = None) -> Any:
    """Tokenizer with a pad token (eos when missing: attention masks make the value irrelevant)
    and, for the `special` scheme, the identifier tokens <id_1>..<id_N> added as special tokens."""
    from transformers import AutoTokenizer

    src = resolve_path(r.model.tokenizer or r.model.name_or_path)
    key = "model.tokenizer" if r.model.tokenizer else "model.name_or_path"
    if src.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(src)):
        raise LrtError(f"{key}: {src!r} is not a directory; give a local model directory or a hub id")
    try:
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=r.model.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - any failure here (no files, corrupt json, missing backend) is the user's
        msg = " ".join(str(e).split())[:300]
        has_files = os.path.isfile(os.path.join(src, "tokenizer.json"))
        fix = ("fix or replace the broken file named above" if has_files else "the directory needs tokenizer.json "
               "(+ tokenizer_config.json): copy them from the base model, or point model.tokenizer at a directory "
               "that has them")
        raise LrtError(f"{key}: cannot load a tokenizer from {src!r} ({type(e).__name__}: {msg}); {fix}") from None
    if not getattr(tok, "is_fast", False):
        raise LrtError(f"{src}: lrt needs a fast tokenizer (character offsets locate answer positions)")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if r.identifier_scheme() == "special":
        n = n_identifiers or r.data.window
        if not n:
            raise LrtError("prompt.identifiers=special needs data.window (how many <id_k> tokens to add)")
        missing = [t for t in special_tokens(n) if t not in tok.get_vocab()]
        if missing:
            tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
            # rows to initialise from numerals (not rows a trained checkpoint already carries)
            tok.lrt_new_identifier_ids = tok.convert_tokens_to_ids(missing)
    return tok


def _check_device_features(r: Recipe) -> str:
    """flash_attention_2 needs CUDA and the flash-attn package; anything else falls back to sdpa."""
    attn = r.model.attn_implementation
    if attn == "flash_attention_2":
        try:
            from transformers.utils import is_flash_attn_2_available

            ok = torch.cuda.is_available() and is_flash_attn_2_available()
        except ImportError:
            ok = False
        if not ok:
            log.warning("flash_attention_2 needs CUDA and the flash-attn package: falling back to sdpa")
            attn = "sdpa"
    return attn


def quantization_config(r: Recipe) -> Any:
    q = r.model.quantization
    if q is None:
        return None
    from transformers import BitsAndBytesConfig

    if q.bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=q.quant_type, bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=DTYPES[q.compute_dtype],
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def _device_map(r: Recipe) -> Any:
    """k-bit weights are quantised while loading, so they must load straight onto this rank's device."""
    if r.model.quantization is None:
        return None
    if torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return {"": "cpu"}


def _apply_config_overrides(cfg: Any, overrides: dict[str, Any]) -> None:
    """Set `model.config_overrides` on a model config; a value of another type than the config's own
    (e.g. a string for `num_hidden_layers`) is a user error, reported by key."""
    bad = []
    known = set(cfg.to_dict())
    for k in overrides:
        if k not in known:  # a typo would otherwise set an attribute nothing reads
            import difflib

            close = difflib.get_close_matches(k, sorted(known), n=1)
            bad.append(f"{k} (not a field of {type(cfg).__name__}" + (f"; did you mean {close[0]!r}?)" if close else ")"))
    if bad:
        raise LrtError(f"model.config_overrides: unknown key(s) {', '.join(bad)}")
    for k, v in overrides.items():
        cur = getattr(cfg, k, None)
        num = (int, float)
        if cur is not None and not isinstance(cur, bool) and isinstance(cur, num) and (isinstance(v, bool) or not isinstance(v, num)):
            bad.append(f"{k}={v!r} (expected a number like {cur!r})")
        elif isinstance(cur, bool) and not isinstance(v, bool):
            bad.append(f"{k}={v!r} (expected true or false)")
        elif isinstance(cur, int) and not isinstance(cur, bool) and isinstance(v, float) and not v.is_integer():
            bad.append(f"{k}={v!r} (expected an integer like {cur!r})")
    if bad:
        raise LrtError(f"model.config_overrides: wrong type for {', '.join(bad)}")
    for k, v in overrides.items():
        setattr(cfg, k, v)


def load_model(r: Recipe, tokenizer: Any) -> nn.Module:
    """The causal LM, resized for added identifier tokens, with QLoRA preparation, gradient
    checkpointing, LoRA and NEFTune applied (in that order: each step needs the previous one)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    src = resolve_path(r.model.name_or_path)
    dtype = DTYPES[r.model.dtype]
    attn = _check_device_features(r)
    try:
        if r.model.init == "from_config":
            cfg = AutoConfig.from_pretrained(src, trust_remote_code=r.model.trust_remote_code)
            _apply_config_overrides(cfg, r.model.config_overrides)
            try:
                model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn)
            except (TypeError, ValueError, ZeroDivisionError, RuntimeError) as e:
                raise LrtError(f"model.config_overrides: the model cannot be built with "
                               f"{r.model.config_overrides} ({type(e).__name__}: {e}); fix the values") from None
        else:
            extra: dict[str, Any] = {}
            if r.model.config_overrides:  # applied to the checkpoint's config, not silently ignored
                cfg = AutoConfig.from_pretrained(src, trust_remote_code=r.model.trust_remote_code)
                _apply_config_overrides(cfg, r.model.config_overrides)
                extra["config"] = cfg
            if r.model.quantization is not None and not torch.cuda.is_available():
                log.warning("model.quantization: no CUDA, so bitsandbytes quantises with its CPU backend (slow; "
                            "fine for tests): QLoRA's memory savings are a GPU feature")
            try:
                model = AutoModelForCausalLM.from_pretrained(
                    src, dtype=dtype, attn_implementation=attn, trust_remote_code=r.model.trust_remote_code,
                    quantization_config=quantization_config(r), device_map=_device_map(r), **extra,
                )
            except Exception as e:  # noqa: BLE001 - re-raised unless it is one of the user's mistakes below
                if type(e).__module__.startswith("safetensors"):
                    raise LrtError(f"model.name_or_path: the weights in {src!r} cannot be read ({type(e).__name__}: "
                                   f"{e}); the file is truncated or corrupt: copy or export it again") from None
                if not isinstance(e, (ImportError, RuntimeError, ValueError)):
                    raise
                if r.model.quantization is not None:
                    raise LrtError(f"model.quantization: bitsandbytes cannot load {src!r} in {r.model.quantization.bits}"
                                   f"-bit here ({type(e).__name__}: {' '.join(str(e).split())[:300]}); use a CUDA "
                                   "GPU, or drop model.quantization to train LoRA on an unquantised base") from None
                if extra:
                    raise LrtError(f"model.config_overrides: the checkpoint {src!r} cannot be loaded with "
                                   f"{r.model.config_overrides} ({type(e).__name__}: {' '.join(str(e).split())[:300]}); "
                                   "architecture fields must match the weights") from None
                raise
    except OSError as e:
        raise LrtError(f"model.name_or_path: cannot load {src!r} ({e})") from None
    init_special_identifiers(model, tokenizer)
    if r.model.quantization is not None:
        from peft import prepare_model_for_kbit_training

        # freezes the base and upcasts norms/embeddings to fp32; checkpointing is enabled below
        # (non-reentrant) rather than through peft's reentrant-default path
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if r.model.gradient_checkpointing:
        enable_gradient_checkpointing(model, input_grads=r.model.lora is not None)
    if r.model.lora is not None:
        model = apply_lora(model, r)
    if r.model.neftune_alpha:
        add_neftune(model, r.model.neftune_alpha)
    return model


def enable_gradient_checkpointing(model: nn.Module, input_grads: bool) -> None:
    """Non-reentrant checkpointing (works with frozen inputs, DDP and ZeRO-3). Under LoRA the
    embedding output is also made to require grad: every base weight is frozen, so without it
    a reentrant fallback anywhere would silently drop the adapters' gradients."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False
    if input_grads and not getattr(model, "_require_grads_hooks", None):
        model.enable_input_require_grads()


def init_special_identifiers(model: nn.Module, tokenizer: Any) -> None:
    """Resize for added <id_k> tokens if needed, and initialise every *newly added* <id_k> row from
    the embedding of the numeral k (input and, if untied, output embeddings).

    Rows are initialised even when no resize happens: some checkpoints (Qwen2.5) carry spare
    embedding rows, and new tokens land there. The numeral's pieces are averaged with weights
    2^-i by position so that digit-split anagrams (<id_12>, <id_21>) start apart. That alone maps
    repeated pieces onto the single piece (<id_11> = <id_1> when digits split), and under LoRA
    without `modules_to_save` such rows would stay tied forever; so a numeral of L pieces is
    further pulled towards the mean embedding by 1 - 0.9^(L-1) (0 for one piece, 0.1 for two),
    which makes every <id_k> row distinct (tests/test_special_init.py).
    """
    w = model.get_input_embeddings().weight
    vocab = int(getattr(w, "ds_shape", w.shape)[0])  # ZeRO-3 partitions have shape [0]
    new_ids: list[int] = list(getattr(tokenizer, "lrt_new_identifier_ids", []))
    if not new_ids:  # tokens added outside load_tokenizer: the rows past the old matrix are new
        new_ids = [i for t, i in tokenizer.get_vocab().items() if t.startswith("<id_") and i >= vocab]
    if len(tokenizer) > vocab:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if not new_ids:
        return
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    from lrt.objective.module import gathered

    params = [emb] + ([out.weight] if out is not None and out.weight is not emb else [])
    with gathered(params, modifier_rank=0), torch.no_grad():  # ZeRO-3: edit the full rows, re-partition
        old = torch.ones(emb.shape[0], dtype=torch.bool, device=emb.device)
        old[torch.tensor(new_ids, device=emb.device)] = False
        means = {id(w): w[old].float().mean(0) for w in params}  # of the pre-existing rows only
        for tid in new_ids:
            numeral = tokenizer.convert_ids_to_tokens(tid)[4:-1]
            src_ids = tokenizer(numeral, add_special_tokens=False)["input_ids"]
            wts = torch.tensor([2.0 ** -i for i in range(len(src_ids))], dtype=torch.float32, device=emb.device)
            wts = (wts / wts.sum()).unsqueeze(1)
            pull = 1.0 - 0.9 ** (len(src_ids) - 1)  # 0 for a one-piece numeral: exactly its embedding
            for w in params:
                mix = (w[src_ids].float() * wts).sum(0)
                w[tid] = ((1.0 - pull) * mix + pull * means[id(w)]).to(w.dtype)


def apply_lora(model: nn.Module, r: Recipe) -> nn.Module:
    """Wrap in a PEFT LoRA model. Adapter weights stay fp32 on a bf16 base (peft's
    autocast_adapter_dtype), so the optimizer updates fp32 tensors under bf16 autocast."""
    from peft import LoraConfig, get_peft_model

    lc = r.model.lora
    assert lc is not None
    cfg = LoraConfig(
        r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=lc.target_modules,
        modules_to_save=lc.modules_to_save or None, task_type="CAUSAL_LM",
    )
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    unknown = [m for m in lc.modules_to_save or [] if m not in names]
    if unknown:  # peft would silently save nothing for them
        raise LrtError(f"model.lora.modules_to_save: {unknown} match no module of this model; e.g. "
                       f"{sorted(n for n in names if n.endswith(('head', 'embed_tokens', 'norm')))}")
    try:
        return get_peft_model(model, cfg)
    except ValueError as e:  # peft's NoMatchingPeftModuleError and friends
        raise LrtError(f"model.lora.target_modules={lc.target_modules!r} / modules_to_save={lc.modules_to_save!r} "
                       f"do not fit this model ({' '.join(str(e).split())[:200]}); its linear layers are {linear}") from None


def add_neftune(model: nn.Module, alpha: float) -> None:
    """NEFTune (both anchors use alpha=5): uniform noise of scale alpha/sqrt(L*d) on the input
    embeddings, in training mode only."""
    emb = model.get_input_embeddings()

    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        dims = output.shape[1] * output.shape[2]
        mag = alpha / dims**0.5
        return output + torch.zeros_like(output).uniform_(-mag, mag)

    emb.register_forward_hook(hook)
