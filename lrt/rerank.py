"""`Reranker`: rerank with exactly the prompt and scoring that were trained.

Three modes, one prompt renderer (`lrt.data.collate.encode_example`), so the reranker can never
see a different prompt from the one the model was trained on:

- `first_token` (FIRST): one forward pass per window; candidate scores are the identifier logits at
  the answer position (the `[` the target starts with), from the identifier rows of the LM head only
  (never a `[B, T, vocab]` tensor). Windows slide back to front (RankGPT) and the windows of
  different queries at the same step are batched, sorted by length to waste little padding.
- `full`: the same scoring over ONE window holding all N candidates (fullrank's single pass). It
  needs N single-token identifiers, i.e. the `special` scheme `<id_1>..<id_N>` for N > 26.
- `generate` (RankZephyr / fullrank baseline): greedy decoding of the whole permutation with a KV
  cache, batched with left padding, parsed with RankGPT's repair rules (`parse_permutation`). The
  share of outputs that needed no repair is reported in `last_stats`: it is the baseline's format
  accuracy, which the scoring modes do not need (they always yield a permutation).

Backends: `hf` (in-process forward/generate, above) and `openai` (`Reranker.from_openai`: any
OpenAI-compatible completions endpoint, e.g. vLLM or SGLang, see `lrt.rerank_openai`). Both render
the prompt with the same template, so the same model gives the same orderings through either.

Scores (the score rule). Every scoring mode returns the model's own scores, not ranks:
- a window's score of a candidate is log p(identifier | prompt + "[") at the answer position: the
  identifier logit minus the log-sum-exp over the whole vocabulary row (the same number vLLM
  returns as a top logprob; computed chunk-wise, never a [B, T, vocab] tensor);
- windows slide back to front, so a candidate is re-scored by every window that holds it; its raw
  score is the one from the LAST window that placed it (the window that decided its final place);
- the final order is the sliding-window order. Raw scores of different windows need not be
  monotone along it, so the returned score is made strictly decreasing by a running minimum with a
  margin: score[0] = raw[0], score[i] = min(raw[i], score[i-1] - SCORE_STEP) (SCORE_STEP = 1e-3).
  The order is never changed, scores are tie-free, and within the top window (where most of the
  evaluation weight is) they are the model's log-probabilities unchanged unless two differ by
  less than the step.
- `generate` mode has no per-candidate scores: it returns rank-derived n, n-1, ..., 1 (and so do
  lists of one candidate, which need no model call).
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import torch
from torch import nn

from lrt.data.collate import Encoded, ListwiseCollator, encode_example, identifier_token_ids
from lrt.data.parse import parse_permutation
from lrt.data.prompts import ALPHA_MAX, PromptTemplate, identifier_labels, special_tokens
from lrt.data.schema import Candidate, ListwiseExample
from lrt.errors import DataError, LrtError
from lrt.scoring import decoder_and_head, hidden_states, identifier_scores, unwrap

log = logging.getLogger("lrt")

META_FILE = "lrt_reranker.json"
Mode = Literal["first_token", "full", "generate", "pointwise"]
# pointwise: one sequence per (query, passage), yes/no scores (lrt.rerank_pointwise.PointwiseReranker)
MODES: tuple[str, ...] = ("first_token", "full", "generate", "pointwise")
BACKENDS: tuple[str, ...] = ("hf", "openai")
SCORE_STEP = 1e-3  # the margin of the running-minimum rule that makes final scores strictly decreasing
Query = tuple[str, str, Sequence[Candidate]]  # (qid, query text, candidates in first-stage order)
# (qid, query text, the window's candidates in current order); (query, candidates) is accepted too
Window = tuple[str, str, Sequence[Candidate]] | tuple[str, Sequence[Candidate]]


def _unpack(item: Window) -> tuple[str, str, Sequence[Candidate]]:
    return (item[0], item[1], item[2]) if len(item) == 3 else ("q", item[0], item[1])  # type: ignore[misc]


def monotone_scores(raw: Sequence[float], step: float = SCORE_STEP) -> list[float]:
    """The score rule's last step: keep the order, cap each score at the one above minus `step`."""
    out: list[float] = []
    for r in raw:
        out.append(float(r) if not out else min(float(r), out[-1] - step))
    return out


@dataclass
class RerankerMeta:
    """What an exported checkpoint needs to rerank exactly as it was trained."""

    template: dict[str, Any]
    window: int
    stride: int
    max_length: int
    lrt_version: str = "0.1.0"
    # BOS as trained: "prepended" (lrt put the tokenizer's BOS first), "template" (the chat template
    # writes it) or "none"; None in exports older than the BOS policy. Pinned into the template below,
    # so the Reranker (HF or openai backend) adds BOS exactly as training did.
    bos: str | None = None
    rank_llm: str | None = None  # how rank_llm serves this model with the same prompt (rank_llm presets)
    mode: str = "first_token"  # "pointwise": template is a PointwiseTemplate (lrt.data.pointwise); window unused

    def __post_init__(self) -> None:
        if self.bos is not None and isinstance(self.template, dict) and self.mode != "pointwise":
            self.template = {**self.template, "bos": "always" if self.bos == "prepended" else "never"}

    @property
    def default_mode(self) -> str:
        """How this export reranks unless told otherwise: its own pointwise scoring, else first-token."""
        return "pointwise" if self.mode == "pointwise" else "first_token"

    def save(self, out_dir: str | Path) -> None:
        Path(out_dir, META_FILE).write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "RerankerMeta":
        """Read `lrt_reranker.json`; unknown keys (a newer exporter) are ignored with a warning."""
        f = Path(path, META_FILE)
        if not f.exists():
            adapter_only = Path(path, "NOT_MERGED.txt").exists()
            hint = " (QLoRA adapter only: run `lrt export RUN_DIR --out DIR` first)" if adapter_only else ""
            raise LrtError(f"{path}: no {META_FILE}; export the model with `lrt export` (or `lrt train`){hint}")
        try:
            raw = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise LrtError(f"{f}: invalid JSON ({e.msg}); re-export the model") from None
        if not isinstance(raw, dict):
            raise LrtError(f"{f}: expected a JSON object with template, window, stride, max_length (got "
                           f"{type(raw).__name__}); re-export the model with `lrt export`")
        known = {x.name for x in fields(cls)}
        if extra := sorted(set(raw) - known):
            log.warning("%s: ignoring unknown keys %s (written by a newer lrt?)", f, extra)
        missing = [k for k in ("template", "window", "stride", "max_length") if k not in raw]
        if missing:
            raise LrtError(f"{f}: missing {missing}; re-export the model with `lrt export`")
        bad = [k for k in ("window", "stride", "max_length")
               if not isinstance(raw[k], int) or isinstance(raw[k], bool) or raw[k] < 1]
        if not isinstance(raw["template"], dict):
            bad.insert(0, "template")
        if bad:
            raise LrtError(f"{f}: {', '.join(f'{k}={raw[k]!r}' for k in bad)} invalid (window, stride and max_length "
                           "are positive integers, template an object); re-export the model with `lrt export`")
        return cls(**{k: v for k, v in raw.items() if k in known})


@dataclass
class RerankStats:
    """What one `rerank_many` call did. `valid_share` (generate mode) is the share of decoded
    outputs that were already a complete permutation, i.e. needed no RankGPT repair."""

    mode: str
    backend: str = "hf"
    scores: str = "logprob"  # "logprob" (the score rule in the module docstring) or "rank" (generate)
    queries: int = 0
    windows: int = 0  # windows ranked by the model (windows of <2 candidates need no call)
    batches: int = 0  # forward / generate calls
    prompt_tokens: int = 0
    generated_tokens: int = 0  # generate mode: new tokens decoded (up to EOS)
    valid: int = 0
    duplicates: int = 0
    out_of_range: int = 0
    missing: int = 0
    # openai scoring modes: how identifier logprobs were got ("token_ids": vLLM's logprob_token_ids, exact;
    # "top_k": the top-`top_logprobs` by token id), and identifiers absent from them (scored below the returned ones)
    logprob_path: str | None = None
    top_logprobs: int = 0
    missing_identifiers: int = 0
    windows_with_missing: int = 0
    seconds: float = 0.0
    repaired_examples: list[str] = field(default_factory=list)  # first few raw outputs that needed repair

    @property
    def valid_share(self) -> float | None:
        return self.valid / self.windows if self.mode == "generate" and self.windows else None

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "repaired_examples"}
        d["valid_share"] = self.valid_share
        return d


def sliding_windows(n: int, window: int, stride: int) -> list[tuple[int, int]]:
    """Back-to-front windows [start, end): for n=100, w=20, s=10 -> [80,100), [70,90), ..., [0,20).

    Same schedule as RankGPT/FIRST (9 windows for 100/20/10), except that it stops once a window
    reaches the top instead of emitting RankGPT's extra clipped windows (e.g. [0,5) for n=25).
    """
    if n <= window:
        return [(0, n)]
    out = []
    end, start = n, n - window
    while True:
        out.append((start, end))
        if start == 0:
            return out
        end -= stride
        start = max(0, start - stride)


class Reranker:
    """Listwise reranking with a causal LM trained by lrt (or any model and a `PromptTemplate`).

    `mode` is the default for `rerank`/`rerank_many`; scoring modes probe the identifier tokens at
    construction so a multi-token identifier fails here, not after an hour of reranking.
    Generation knobs: `gen_margin` extra new tokens beyond the window's target length, and
    `gen_force_length` (decode exactly the target length, ignoring EOS: what the benchmark times).
    `backend` (an `lrt.rerank_openai.OpenAIBackend`, see `from_openai`) sends the windows to a
    server instead of `model` (then None).
    """

    def __init__(
        self, model: nn.Module, tokenizer: Any, template: PromptTemplate, *, window: int = 20, stride: int = 10,
        max_length: int = 4096, batch_size: int = 8, padding_side: str = "left", mode: Mode = "first_token",
        gen_margin: int = 16, gen_force_length: bool = False, backend: Any = None,
    ) -> None:
        if window < 2 or stride <= 0 or stride > window:
            raise LrtError(f"need window >= 2 and stride in 1..window (got window={window}, stride={stride})")
        if batch_size < 1:
            raise LrtError(f"batch_size must be >= 1 (got {batch_size})")
        _check_mode(mode)
        if mode == "pointwise":
            raise LrtError("mode pointwise reranks with lrt.rerank_pointwise.PointwiseReranker (Reranker.from_pretrained "
                           "of a pointwise export returns one)")
        self.model, self.tok, self.template = model, tokenizer, template
        self.window, self.stride, self.max_length, self.batch_size = window, stride, max_length, batch_size
        self.mode: Mode = mode
        self.gen_margin, self.gen_force_length = gen_margin, gen_force_length
        self.backend = backend
        if model is None and backend is None:
            raise LrtError("Reranker needs a model (in-process) or a backend (Reranker.from_openai)")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise LrtError("the tokenizer has neither a pad nor an eos token: set tokenizer.pad_token")
        self.pad_id = int(pad)
        self.collate = ListwiseCollator(self.pad_id, padding_side)
        self.id_ids: list[int] | None = None
        self.last_stats = RerankStats(mode, backend=self.backend_name)
        self._stats = self.last_stats
        if mode == "first_token":
            self._identifier_ids(window)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, device: str | None = None, dtype: torch.dtype | str = torch.float32,
        mode: Mode | None = None, **overrides: Any,
    ) -> "Reranker":
        """Load an exported model and its `lrt_reranker.json` (template, identifiers, window,
        stride, max_length); keyword `overrides` (window=, stride=, batch_size=, ...) win. `mode`
        None: the export's own (pointwise for a pointwise model, which returns a PointwiseReranker),
        else first_token."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not Path(path).is_dir():
            raise LrtError(f"{path}: not a directory; give an exported model (`lrt export` / RUN_DIR/final)")
        meta = RerankerMeta.load(path)
        mode = mode or meta.default_mode
        if (meta.mode == "pointwise") != (mode == "pointwise"):
            raise LrtError(f"{path}: a {meta.mode} model (lrt_reranker.json) cannot rerank in mode {mode}: "
                           + ("use --mode pointwise" if meta.mode == "pointwise" else "use first_token, full or generate"))
        if mode == "pointwise":
            from lrt.rerank_pointwise import PointwiseReranker

            return PointwiseReranker.from_pretrained(path, device=device, dtype=dtype, **overrides)  # type: ignore[return-value]
        try:
            template = PromptTemplate.from_dict(meta.template)
        except TypeError as e:
            raise LrtError(f"{path}/{META_FILE}: bad prompt template ({e}); re-export the model") from None
        if isinstance(dtype, str):
            if dtype not in ("float32", "bfloat16", "float16"):
                raise LrtError(f"dtype must be float32, bfloat16 or float16 (got {dtype!r})")
            dtype = getattr(torch, dtype)
        device = check_device(device)
        tok = load_export_tokenizer(path)
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        except Exception as e:  # noqa: BLE001 - corrupt/partial weights: a user-fixable export problem
            raise LrtError(f"{path}: cannot load the model weights ({str(e).splitlines()[0][:200]}); give a complete "
                           "export (`lrt export RUN_DIR --out DIR`)") from None
        model.to(device).eval()
        kw: dict[str, Any] = dict(window=meta.window, stride=meta.stride, max_length=meta.max_length, mode=mode)
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(model, tok, template, **kw)

    @classmethod
    def from_openai(
        cls, base_url: str, model: str, export: str | Path, *, mode: Mode = "first_token",
        api_key_env: str | None = None, concurrency: int = 8, logprobs: int | None = None,
        prompt_format: str = "text", timeout_s: float = 120.0, max_retries: int = 6, backoff_s: float = 1.0,
        **overrides: Any,
    ) -> "Reranker":
        """Rerank through an OpenAI-compatible completions endpoint (vLLM, SGLang) serving `model`.

        `export` is the exported model directory (or any directory with its tokenizer and
        `lrt_reranker.json`): lrt renders the prompt itself, with the model's own template, so the
        server sees exactly the prompt the model was trained on. Identifier logprobs are asked by
        token id (vLLM's `logprob_token_ids`, probed once); `logprobs` is the top-k asked for by a
        server without it (default 20); `prompt_format` "text" sends the rendered prompt, "tokens" its token
        ids (exact even where a server would add a BOS). See `lrt.rerank_openai`."""
        from lrt.io.openai_client import OpenAIClient
        from lrt.rerank_openai import OpenAIBackend

        if not Path(export).is_dir():
            raise LrtError(f"{export}: not a directory; the openai backend needs the exported model directory "
                           "(--export DIR) for its tokenizer and lrt_reranker.json")
        meta = RerankerMeta.load(export)
        if mode == "pointwise" or meta.mode == "pointwise":
            raise LrtError("the openai backend does not serve pointwise models: serve the sequence-classifier export "
                           "(`lrt export --to-seq-cls`) through vLLM's score API, or rerank with --backend hf")
        try:
            template = PromptTemplate.from_dict(meta.template)
        except TypeError as e:
            raise LrtError(f"{export}/{META_FILE}: bad prompt template ({e}); re-export the model") from None
        tok = load_export_tokenizer(export)
        client = OpenAIClient(base_url, api_key_env=api_key_env, concurrency=concurrency, timeout_s=timeout_s,
                              max_retries=max_retries, backoff_s=backoff_s, key_option="--api-key-env",
                              url_option="--base-url", fix_hint="check --base-url, --model and --api-key-env")
        backend = OpenAIBackend(client, model, logprobs=logprobs, prompt_format=prompt_format)
        kw: dict[str, Any] = dict(window=meta.window, stride=meta.stride, max_length=meta.max_length, mode=mode)
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(None, tok, template, backend=backend, **kw)  # type: ignore[arg-type]

    @property
    def backend_name(self) -> str:
        return "hf" if self.backend is None else self.backend.name

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- identifiers ------------------------------------------------------------------------
    def _identifier_ids(self, n: int) -> list[int]:
        """Single-token ids of the first n identifiers, probed in context (cached for the max n)."""
        if self.id_ids is None or len(self.id_ids) < n:
            scheme = self.template.identifiers
            if scheme == "alpha" and n > ALPHA_MAX:
                raise LrtError(
                    f"{n} candidates in one window but this model uses alpha identifiers (A..Z, at most {ALPHA_MAX}): "
                    f"use mode first_token with window <= {ALPHA_MAX}, or train with prompt.identifiers=special and "
                    f"data.window >= {n}"
                )
            if scheme == "special":
                vocab = self.tok.get_vocab()
                have = next((k for k, t in enumerate(special_tokens(n)) if t not in vocab), n)
                if have < n:
                    raise LrtError(
                        f"{n} candidates in one window need the identifier tokens <id_1>..<id_{n}>, but the tokenizer "
                        f"has only <id_1>..<id_{have}> (the model was trained with data.window={have}): rerank at most "
                        f"{have} candidates per window (--top-k / --window), or train with data.window >= {n}"
                    )
            self.id_ids = identifier_token_ids(self.tok, self.template, n)
        return self.id_ids[:n]

    # ---- one step: order a batch of windows -------------------------------------------------
    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """Eval mode (no dropout / NEFTune noise) for the call; each module's previous mode is
        restored after, because the trainer evaluates its in-memory model mid-training."""
        from lrt.scoring import eval_mode

        with eval_mode(self.model), torch.no_grad():
            yield

    def _batches(self, encoded: Sequence[Any], length: Callable[[Any], int]) -> Iterator[list[int]]:
        """Index chunks of `batch_size`, longest first: similar lengths waste little padding."""
        order = sorted(range(len(encoded)), key=lambda i: -length(encoded[i]))
        for i in range(0, len(order), self.batch_size):
            yield order[i:i + self.batch_size]

    def encode_window(self, item: Window, *, for_generate: bool = False) -> Encoded:
        """The training encoder on one window; a window that cannot fit `max_length` names the
        query and the reranking fix (--max-length), not a recipe key."""
        qid, q, cands = _unpack(item)
        ex = ListwiseExample(qid, q, list(cands), [c.docid for c in cands])
        ids = None if for_generate else self._identifier_ids(len(cands))
        try:
            return encode_example(self.tok, self.template, ex, max_length=self.max_length, id_token_ids=ids,
                                  include_target=for_generate)
        except DataError as e:
            if "max_length" not in str(e):
                raise
            what = "prompt + the full answer" if for_generate else 'prompt + "["'
            raise DataError(
                f"query {qid}: a window of {len(cands)} passages ({what}) does not fit in max_length="
                f"{self.max_length} tokens even with every passage cut to the minimum: raise --max-length "
                "(Reranker(max_length=...)) or lower --window"
            ) from None

    def score_windows(self, items: Sequence[Window]) -> list[torch.Tensor]:
        """First-token scores (fp32, CPU) of each (qid, query, window candidates) item, batched:
        log p(identifier | prompt + "[") over the full vocabulary row (see the score rule)."""
        if not items:
            return []
        if self.backend is not None:
            return self.backend.score_windows(self, items)
        self._identifier_ids(max(len(_unpack(it)[2]) for it in items))
        enc: list[Encoded] = [self.encode_window(it) for it in items]
        out: list[torch.Tensor | None] = [None] * len(items)
        decoder, head = decoder_and_head(self.model)
        with self._eval_mode():
            for chunk in self._batches(enc, lambda e: len(e.input_ids)):
                batch = {k: v.to(self.device) for k, v in self.collate([enc[i] for i in chunk]).items()}
                h = hidden_states(decoder, batch)
                bias = getattr(head, "bias", None)
                s = identifier_scores(h, batch["answer_pos"], batch["cand_ids"], head.weight, bias)
                s = s - answer_logsumexp(h, batch["answer_pos"], head.weight, bias)[:, None]
                for b, i in enumerate(chunk):
                    out[i] = s[b, : len(_unpack(items[i])[2])].cpu()
                self._stats.batches += 1
                self._stats.prompt_tokens += int(batch["attention_mask"].sum())
        return out  # type: ignore[return-value]

    def generate_windows(self, items: Sequence[Window]) -> list[list[int]]:
        """Greedy-decode each window's permutation and parse it; returns 0-based window orders.

        The prompt is the training prompt (`encode_example` with the target, cut at the target),
        so `max_new_tokens` is the length of a correct answer (incl. EOS) plus `gen_margin`.
        """
        from transformers import GenerationConfig

        if not items:
            return []
        if self.backend is not None:
            return self.backend.generate_windows(self, items)
        prompts: list[tuple[list[int], int]] = []
        for it in items:
            e = self.encode_window(it, for_generate=True)
            prompts.append((e.input_ids[: e.target_start], len(e.input_ids) - e.target_start))
        eos = self.tok.eos_token_id
        lm = unwrap(self.model)
        out: list[list[int]] = [[] for _ in items]
        with self._eval_mode():
            for chunk in self._batches(prompts, lambda p: len(p[0])):
                T = max(len(prompts[i][0]) for i in chunk)
                ids = torch.full((len(chunk), T), self.pad_id, dtype=torch.long)
                attn = torch.zeros((len(chunk), T), dtype=torch.long)
                for b, i in enumerate(chunk):  # left padding: every row's next token is at column T
                    p = prompts[i][0]
                    ids[b, T - len(p):] = torch.tensor(p)
                    attn[b, T - len(p):] = 1
                target = max(prompts[i][1] for i in chunk)
                n_new = target if self.gen_force_length else target + self.gen_margin
                # a fresh config: a model's own generation_config (e.g. Qwen's sampling and
                # repetition_penalty=1.05) would bias a permutation, which repeats "] > [" by design
                cfg = GenerationConfig(
                    max_new_tokens=n_new, min_new_tokens=n_new if self.gen_force_length else None,
                    do_sample=False, num_beams=1, use_cache=True, pad_token_id=self.pad_id,
                    eos_token_id=None if self.gen_force_length else eos,
                )
                gen = lm.generate(input_ids=ids.to(self.device), attention_mask=attn.to(self.device), generation_config=cfg)
                self._stats.batches += 1
                self._stats.prompt_tokens += int(attn.sum())
                for b, i in enumerate(chunk):
                    new = gen[b, T:].tolist()
                    if eos is not None and eos in new and not self.gen_force_length:
                        new = new[: new.index(eos)]
                    self._stats.generated_tokens += len(new)
                    out[i] = self._parse(self.tok.decode(new, skip_special_tokens=False), len(_unpack(items[i])[2]))
        return out

    def _parse(self, text: str, n: int) -> list[int]:
        """RankGPT repair rules; counts what had to be repaired (never silently)."""
        p = parse_permutation(text, identifier_labels(self.template.identifiers, n))
        st = self._stats
        st.valid += p.valid
        st.duplicates += p.duplicates
        st.out_of_range += p.out_of_range
        st.missing += p.missing
        if not p.valid and len(st.repaired_examples) < 5:
            st.repaired_examples.append(text[:200])
        return p.order

    def _order_windows(self, items: Sequence[Window], mode: Mode) -> list[tuple[list[int], list[float] | None]]:
        """Each window's order (0-based, best first) and, in scoring modes, its scores (ties keep
        the current order, which is how identifiers missing from a server's top-k stay put)."""
        if mode == "generate":
            return [(p, None) for p in self.generate_windows(items)]
        out = []
        for s in self.score_windows(items):
            vals = [float(x) for x in s]
            out.append((sorted(range(len(vals)), key=lambda j: (-vals[j], j)), vals))
        return out

    # ---- public API ---------------------------------------------------------------------------
    def rerank_many(
        self, queries: Iterable[Query], *, mode: Mode | None = None, window: int | None = None,
        stride: int | None = None,
    ) -> dict[str, list[tuple[str, float]]]:
        """Rerank many queries; windows at the same step of different queries share batches.

        `full` uses one window of all candidates; the other modes slide `window`/`stride` back to
        front. Returns {qid: [(docid, score)]} best-first with strictly decreasing scores by the
        score rule of the module docstring (generate: n, n-1, ..., 1); what was done (calls,
        tokens, generate's valid share, missing identifiers) is in `self.last_stats`.
        """
        mode = mode or self.mode
        _check_mode(mode)
        w, s = window or self.window, stride or self.stride
        if w < 2 or not 0 < s <= w:
            raise LrtError(f"need window >= 2 and stride in 1..window (got window={w}, stride={s})")
        qs = list(queries)
        self._stats = RerankStats(mode, backend=self.backend_name, scores="rank" if mode == "generate" else "logprob",
                                  queries=len(qs))
        t0 = time.perf_counter()
        orders: dict[str, list[Candidate]] = {}
        texts: dict[str, str] = {}
        for qid, q, cands in qs:
            if qid in orders:
                raise LrtError(f"query {qid!r} appears twice; give each query once")
            docids = [c.docid for c in cands]
            if len(set(docids)) != len(docids):
                dup = next(d for i, d in enumerate(docids) if d in docids[:i])
                raise LrtError(f"query {qid!r}: candidate {dup!r} appears twice; a ranking must list each document once")
            orders[qid], texts[qid] = list(cands), q
        plans = {qid: ([(0, len(c))] if mode == "full" else sliding_windows(len(c), w, s)) if len(c) > 1 else []
                 for qid, c in orders.items()}
        if mode == "full" and plans:
            self._identifier_ids(max(len(c) for c in orders.values()))  # fail before any forward pass
        raw: dict[str, dict[str, float]] = {qid: {} for qid in orders}  # docid -> score of the last window
        import os

        from lrt.progress import Progress

        bar = Progress(sum(len(p) for p in plans.values()), getattr(self, "progress_desc", "rerank"), unit="window",
                       enabled=os.environ.get("RANK", "0") == "0", leave=False)
        for step in range(max((len(p) for p in plans.values()), default=0)):
            active = [qid for qid in orders if step < len(plans[qid])]
            items = [(qid, texts[qid], orders[qid][slice(*plans[qid][step])]) for qid in active]
            for qid, (_, _, win), (perm, vals) in zip(active, items, self._order_windows(items, mode)):
                a, b = plans[qid][step]
                orders[qid][a:b] = [win[j] for j in perm]
                if vals is not None:
                    raw[qid].update((c.docid, v) for c, v in zip(win, vals))
            self._stats.windows += len(active)
            bar.update(len(active))
        bar.close()
        self._stats.seconds = time.perf_counter() - t0
        self.last_stats = self._stats
        return {qid: final_scores([c.docid for c in o], raw[qid]) for qid, o in orders.items()}

    def rerank(
        self, query: str, passages: Sequence[Candidate | tuple[str, str]], *, mode: Mode | None = None,
        window: int | None = None, stride: int | None = None,
    ) -> list[tuple[str, float]]:
        """Docids best-first with strictly decreasing scores for one query."""
        cands = [p if isinstance(p, Candidate) else Candidate(p[0], p[1]) for p in passages]
        return self.rerank_many([("q", query, cands)], mode=mode, window=window, stride=stride)["q"]


def final_scores(order: Sequence[str], raw: dict[str, float]) -> list[tuple[str, float]]:
    """(docid, score) best-first: the last window's score made strictly decreasing (score rule);
    rank-derived n..1 when the model gave no scores (generate mode, a single candidate)."""
    if not order or any(d not in raw for d in order):
        return [(d, float(len(order) - i)) for i, d in enumerate(order)]
    return list(zip(order, monotone_scores([raw[d] for d in order])))


def answer_logsumexp(hidden: torch.Tensor, answer_pos: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None = None, chunk_rows: int = 8192) -> torch.Tensor:
    """fp32 log-sum-exp [B] of the full vocabulary row at each answer position, `chunk_rows` rows
    of the LM head at a time (a [B, chunk] block, never [B, T, vocab]): turns identifier logits
    into the log-probabilities a serving engine reports."""
    B = hidden.shape[0]
    h = hidden[torch.arange(B, device=hidden.device), answer_pos].float()
    parts = []
    for i in range(0, weight.shape[0], chunk_rows):
        z = h @ weight[i:i + chunk_rows].float().T
        if bias is not None:
            z = z + bias[i:i + chunk_rows].float()
        parts.append(torch.logsumexp(z, dim=-1))
    return torch.logsumexp(torch.stack(parts, dim=-1), dim=-1)


def check_device(device: str | None) -> str:
    """The device to load on, or one clear error before any loading (e.g. --device cuda without CUDA)."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise LrtError(f"--device {device!r} is not a device; give cpu, cuda or cuda:N") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise LrtError(f"--device {device}: CUDA is not available here (torch {torch.__version__}, built for CUDA "
                           f"{torch.version.cuda or 'none'}); use --device cpu or run on a GPU machine")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise LrtError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible; "
                           f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif d.type not in ("cpu", "cuda", "mps"):
        raise LrtError(f"--device {device!r}: unsupported device type {d.type!r}; give cpu or cuda[:N]")
    elif d.type == "mps" and not torch.backends.mps.is_available():
        raise LrtError(f"--device {device}: MPS is not available here; use --device cpu")
    return str(d)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_export_tokenizer(path: str | Path) -> Any:
    """The export's tokenizer, or one clear error naming the directory (never a transformers traceback)."""
    from transformers import AutoTokenizer

    if not any(Path(path, f).exists() for f in TOKENIZER_FILES):
        raise LrtError(f"{path}: no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}): the export is incomplete; "
                       "re-export with `lrt export RUN_DIR --out DIR`, or save the training tokenizer into it")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise LrtError(f"{path}: cannot load the tokenizer ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__}); "
                       "re-export with `lrt export RUN_DIR --out DIR`") from None


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise LrtError(f"unknown rerank mode {mode!r}; choose one of {', '.join(MODES)}")
