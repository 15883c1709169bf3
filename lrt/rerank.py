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

Every mode returns docids best-first with strictly decreasing scores n, n-1, ..., 1 (rank-derived,
so tie-breaking conventions of trec_eval / ir_measures never matter).
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
from lrt.errors import LrtError
from lrt.scoring import decoder_and_head, hidden_states, identifier_scores, unwrap

log = logging.getLogger("lrt")

META_FILE = "lrt_reranker.json"
Mode = Literal["first_token", "full", "generate"]
MODES: tuple[str, ...] = ("first_token", "full", "generate")
Query = tuple[str, str, Sequence[Candidate]]  # (qid, query text, candidates in first-stage order)
Window = tuple[str, Sequence[Candidate]]  # (query text, the window's candidates in current order)


@dataclass
class RerankerMeta:
    """What an exported checkpoint needs to rerank exactly as it was trained."""

    template: dict[str, Any]
    window: int
    stride: int
    max_length: int
    lrt_version: str = "0.1.0"

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
        known = {x.name for x in fields(cls)}
        if extra := sorted(set(raw) - known):
            log.warning("%s: ignoring unknown keys %s (written by a newer lrt?)", f, extra)
        missing = [k for k in ("template", "window", "stride", "max_length") if k not in raw]
        if missing:
            raise LrtError(f"{f}: missing {missing}; re-export the model with `lrt export`")
        return cls(**{k: v for k, v in raw.items() if k in known})


@dataclass
class RerankStats:
    """What one `rerank_many` call did. `valid_share` (generate mode) is the share of decoded
    outputs that were already a complete permutation, i.e. needed no RankGPT repair."""

    mode: str
    queries: int = 0
    windows: int = 0  # windows ranked by the model (windows of <2 candidates need no call)
    batches: int = 0  # forward / generate calls
    prompt_tokens: int = 0
    generated_tokens: int = 0  # generate mode: new tokens decoded (up to EOS)
    valid: int = 0
    duplicates: int = 0
    out_of_range: int = 0
    missing: int = 0
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
    """

    def __init__(
        self, model: nn.Module, tokenizer: Any, template: PromptTemplate, *, window: int = 20, stride: int = 10,
        max_length: int = 4096, batch_size: int = 8, padding_side: str = "left", mode: Mode = "first_token",
        gen_margin: int = 16, gen_force_length: bool = False,
    ) -> None:
        if window < 2 or stride <= 0 or stride > window:
            raise LrtError(f"need window >= 2 and stride in 1..window (got window={window}, stride={stride})")
        if batch_size < 1:
            raise LrtError(f"batch_size must be >= 1 (got {batch_size})")
        _check_mode(mode)
        self.model, self.tok, self.template = model, tokenizer, template
        self.window, self.stride, self.max_length, self.batch_size = window, stride, max_length, batch_size
        self.mode: Mode = mode
        self.gen_margin, self.gen_force_length = gen_margin, gen_force_length
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise LrtError("the tokenizer has neither a pad nor an eos token: set tokenizer.pad_token")
        self.pad_id = int(pad)
        self.collate = ListwiseCollator(self.pad_id, padding_side)
        self.id_ids: list[int] | None = None
        self.last_stats = RerankStats(mode)
        self._stats = self.last_stats
        if mode == "first_token":
            self._identifier_ids(window)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, device: str | None = None, dtype: torch.dtype | str = torch.float32,
        mode: Mode = "first_token", **overrides: Any,
    ) -> "Reranker":
        """Load an exported model and its `lrt_reranker.json` (template, identifiers, window,
        stride, max_length); keyword `overrides` (window=, stride=, batch_size=, ...) win."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not Path(path).is_dir():
            raise LrtError(f"{path}: not a directory; give an exported model (`lrt export` / RUN_DIR/final)")
        meta = RerankerMeta.load(path)
        try:
            template = PromptTemplate.from_dict(meta.template)
        except TypeError as e:
            raise LrtError(f"{path}/{META_FILE}: bad prompt template ({e}); re-export the model") from None
        if isinstance(dtype, str):
            if dtype not in ("float32", "bfloat16", "float16"):
                raise LrtError(f"dtype must be float32, bfloat16 or float16 (got {dtype!r})")
            dtype = getattr(torch, dtype)
        tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
        kw: dict[str, Any] = dict(window=meta.window, stride=meta.stride, max_length=meta.max_length, mode=mode)
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(model, tok, template, **kw)

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
        """Eval mode (no dropout / NEFTune noise) for the call; training mode is restored after,
        because the trainer evaluates its in-memory model mid-training."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train(was_training)

    def _batches(self, encoded: Sequence[Any], length: Callable[[Any], int]) -> Iterator[list[int]]:
        """Index chunks of `batch_size`, longest first: similar lengths waste little padding."""
        order = sorted(range(len(encoded)), key=lambda i: -length(encoded[i]))
        for i in range(0, len(order), self.batch_size):
            yield order[i:i + self.batch_size]

    def score_windows(self, items: Sequence[Window]) -> list[torch.Tensor]:
        """First-token scores (fp32, CPU) of each (query, window candidates) item, batched."""
        if not items:
            return []
        ids = self._identifier_ids(max(len(c) for _, c in items))
        enc: list[Encoded] = []
        for q, cands in items:
            ex = ListwiseExample("q", q, list(cands), [c.docid for c in cands])
            enc.append(encode_example(self.tok, self.template, ex, max_length=self.max_length, id_token_ids=ids,
                                      include_target=False))
        out: list[torch.Tensor | None] = [None] * len(items)
        decoder, head = decoder_and_head(self.model)
        with self._eval_mode():
            for chunk in self._batches(enc, lambda e: len(e.input_ids)):
                batch = {k: v.to(self.device) for k, v in self.collate([enc[i] for i in chunk]).items()}
                h = hidden_states(decoder, batch)
                s = identifier_scores(h, batch["answer_pos"], batch["cand_ids"], head.weight, getattr(head, "bias", None))
                for b, i in enumerate(chunk):
                    out[i] = s[b, : len(items[i][1])].cpu()
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
        prompts: list[tuple[list[int], int]] = []
        for q, cands in items:
            ex = ListwiseExample("q", q, list(cands), [c.docid for c in cands])
            e = encode_example(self.tok, self.template, ex, max_length=self.max_length, id_token_ids=None)
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
                    out[i] = self._parse(self.tok.decode(new, skip_special_tokens=False), len(items[i][1]))
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

    def _order_windows(self, items: Sequence[Window], mode: Mode) -> list[list[int]]:
        if mode == "generate":
            return self.generate_windows(items)
        return [sorted(range(len(s)), key=lambda j: (-float(s[j]), j)) for s in self.score_windows(items)]

    # ---- public API ---------------------------------------------------------------------------
    def rerank_many(
        self, queries: Iterable[Query], *, mode: Mode | None = None, window: int | None = None,
        stride: int | None = None,
    ) -> dict[str, list[tuple[str, float]]]:
        """Rerank many queries; windows at the same step of different queries share batches.

        `full` uses one window of all candidates; the other modes slide `window`/`stride` back to
        front. Returns {qid: [(docid, score)]} best-first with scores n, n-1, ..., 1; what was done
        (calls, tokens, generate's valid share) is in `self.last_stats`.
        """
        mode = mode or self.mode
        _check_mode(mode)
        w, s = window or self.window, stride or self.stride
        if w < 2 or not 0 < s <= w:
            raise LrtError(f"need window >= 2 and stride in 1..window (got window={w}, stride={s})")
        qs = list(queries)
        self._stats = RerankStats(mode, queries=len(qs))
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
        for step in range(max((len(p) for p in plans.values()), default=0)):
            active = [qid for qid in orders if step < len(plans[qid])]
            items = [(texts[qid], orders[qid][slice(*plans[qid][step])]) for qid in active]
            for qid, (_, win), perm in zip(active, items, self._order_windows(items, mode)):
                a, b = plans[qid][step]
                orders[qid][a:b] = [win[j] for j in perm]
            self._stats.windows += len(active)
        self._stats.seconds = time.perf_counter() - t0
        self.last_stats = self._stats
        return {qid: [(c.docid, float(len(o) - i)) for i, c in enumerate(o)] for qid, o in orders.items()}

    def rerank(
        self, query: str, passages: Sequence[Candidate | tuple[str, str]], *, mode: Mode | None = None,
        window: int | None = None, stride: int | None = None,
    ) -> list[tuple[str, float]]:
        """Docids best-first with strictly decreasing scores for one query."""
        cands = [p if isinstance(p, Candidate) else Candidate(p[0], p[1]) for p in passages]
        return self.rerank_many([("q", query, cands)], mode=mode, window=window, stride=stride)["q"]


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise LrtError(f"unknown rerank mode {mode!r}; choose one of {', '.join(MODES)}")
