"""Training data: load + validate, encode once into the tokenised cache (`lrt.data.cache`, built by
rank 0 while the others wait, then memory-mapped by every rank), a deterministic step sampler whose
only state is the step number (exact resume, any world size), optionally length-grouped, and the
stream of collated micro-batches (inline, or in DataLoader workers with pinned memory).

`data.cache: false` keeps the in-memory path (`load_split` + `encode_all`: Python lists on every rank).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch

from lrt.config import Recipe, resolve_path
from lrt.data.collate import encode_example
from lrt.data.prompts import PromptTemplate, max_candidates
from lrt.data.schema import ListwiseExample, load_examples
from lrt.errors import LrtError
from lrt.families.listwise import prompt_template  # noqa: F401  (re-exported: lrt.train.data.prompt_template)

log = logging.getLogger("lrt")


def load_split(r: Recipe, source: str) -> list[ListwiseExample]:
    """Validated examples; `data.window` cuts long lists so the alpha limit applies to the window."""
    limit = None if r.data.window else max_candidates(r.identifier_scheme())  # type: ignore[arg-type]
    exs, report = load_examples(
        resolve_path(source), on_invalid=r.data.on_invalid, max_candidates=limit, split=r.data.split, limit=r.data.limit
    )
    if report.skipped:
        log.warning("data %s: %s", source, report.summary())
    return exs


def encode_all(
    r: Recipe, tokenizer: Any, template: PromptTemplate, examples: Sequence[ListwiseExample],
    id_token_ids: list[int] | None, include_target: bool,
) -> list[dict[str, Any]]:
    """Encode every example once; with data.num_proc > 1 through `datasets.map` worker processes."""
    kw = dict(max_length=r.data.max_length, id_token_ids=id_token_ids, window=r.data.window, include_target=include_target)
    if r.data.num_proc <= 1:
        import os

        from lrt.progress import track

        show = r.log.progress and os.environ.get("RANK", "0") == "0"  # one bar, on rank 0
        return [encode_example(tokenizer, template, ex, **kw).to_row()  # type: ignore[arg-type]
                for ex in track(examples, "encode", unit="list", enabled=show, leave=False)]
    import datasets

    def fn(row: dict[str, Any]) -> dict[str, Any]:
        from lrt.data.schema import example_from_row

        return encode_example(tokenizer, template, example_from_row(dict(row)), **kw).to_row()  # type: ignore[arg-type]

    rows = [ex.to_row() for ex in examples]
    for row in rows:
        row.setdefault("relevance", None)
        row.setdefault("teacher_scores", None)
    ds = datasets.Dataset.from_list(rows)
    enc = ds.map(fn, num_proc=r.data.num_proc, remove_columns=ds.column_names, desc="encode")
    return [dict(x) for x in enc]


@dataclass
class StepSampler:
    """Global batch of optimizer step s = a slice of a seeded per-epoch permutation.

    Rank `rank` takes micro-batch m of that slice at offset (m * world + rank) * per_device, so a
    run with W processes and A accumulation steps sees the same global batches as 1 process with
    W*A accumulation steps, and resuming needs nothing but the step number.

    Length grouping (`group`): the permutation is cut into chunks of `group_steps` global batches;
    inside a chunk the lists are sorted by length (longest first), cut into global batches, and those
    are shuffled (seeded) over the chunk's steps. A step then holds lists of similar length, in sorted
    order, so its micro-batches pad little. The invariances above still hold, and one more: which
    lists a step holds depends on the step number and the global batch only, not on how it is split
    into per-device batches, accumulation steps and ranks.
    """

    n_examples: int
    per_device: int
    grad_accum: int
    world: int
    seed: int
    lengths: np.ndarray | None = None  # tokens per list: padding figures, and grouping when `group`
    group: bool = False
    group_steps: int = 50
    _memo: tuple[int, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def global_batch(self) -> int:
        return self.per_device * self.grad_accum * self.world

    @property
    def steps_per_epoch(self) -> int:
        return self.n_examples // self.global_batch

    @property
    def grouped(self) -> bool:
        return self.group and self.lengths is not None

    def epoch_batches(self, epoch: int, grouped: bool | None = None) -> np.ndarray:
        """[steps_per_epoch, global_batch] example indices of every step of an epoch."""
        grouped = self.grouped if grouped is None else grouped
        if grouped == self.grouped and self._memo is not None and self._memo[0] == epoch:
            return self._memo[1]
        spe, G = self.steps_per_epoch, self.global_batch
        if spe == 0:
            raise ValueError(
                f"{self.n_examples} training lists < one global batch of {G} "
                "(per_device_batch_size x grad_accum x world size)"
            )
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n_examples, generator=g).numpy()[: spe * G]
        if grouped:
            assert self.lengths is not None
            out = []
            for c0 in range(0, spe, self.group_steps):
                chunk = perm[c0 * G: min(c0 + self.group_steps, spe) * G]
                chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")].reshape(-1, G)
                order = torch.randperm(len(chunk), generator=g).numpy()
                out.append(chunk[order].reshape(-1))
            perm = np.concatenate(out)
        batches = perm.reshape(spe, G)
        if grouped == self.grouped:
            self._memo = (epoch, batches)
        return batches

    def step_indices(self, step: int) -> list[int]:
        epoch, i = divmod(step, max(self.steps_per_epoch, 1))
        return self.epoch_batches(epoch)[i].tolist()

    def padding_fraction(self, grouped: bool, epoch: int = 0) -> float | None:
        """Padded share of the token slots of an epoch's micro-batches (None without lengths)."""
        if self.lengths is None or self.steps_per_epoch == 0:
            return None
        lens = self.lengths[self.epoch_batches(epoch, grouped).reshape(-1, self.per_device)]
        slots = float(lens.max(axis=1).sum()) * self.per_device
        return 1.0 - float(lens.sum()) / slots if slots else 0.0

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        idx = self.step_indices(step)
        out = []
        for m in range(self.grad_accum):
            start = (m * self.world + rank) * self.per_device
            out.append(idx[start:start + self.per_device])
        return out


def batch_to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# ---- micro-batch stream ---------------------------------------------------------------------------
def collate_step(collate: Callable, items: list, step: int, ids: Sequence[int] | None = None,
                 seed: int = 0) -> dict[str, torch.Tensor]:
    """Collate; a collator with `takes_step` (pointwise group sampling) is told the optimizer step.

    With `ids` (the lists' training-set indices) the batch carries `list_seed` [B]: each list's own
    seed from (train.seed, step, index), for losses that sample (pg_rank), so their draws do not
    depend on the micro-batch, accumulation step or rank a list lands in."""
    batch = collate(items, step=step) if getattr(collate, "takes_step", False) else collate(items)
    if ids is not None:
        from lrt.losses.pg_rank import list_seeds

        batch["list_seed"] = list_seeds(seed, step, ids)
    return batch


class _StepMicroBatches(torch.utils.data.Dataset):
    """Item k = micro-batch k % A of step start + k // A for this rank, collated. A pure function of
    k: DataLoader workers produce exactly what the inline path does, in order, and resuming at step s
    starts the stream at s."""

    def __init__(self, rows: Sequence[dict], sampler: StepSampler, collate: Callable, rank: int, start: int, stop: int):
        self.rows, self.sampler, self.collate, self.rank = rows, sampler, collate, rank
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.sampler.grad_accum

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        step, m = divmod(k, self.sampler.grad_accum)
        idx = self.sampler.micro_batches(self.start + step, self.rank)[m]
        return collate_step(self.collate, [self.rows[i] for i in idx], self.start + step, idx, self.sampler.seed)


def length_grouping(r: Recipe, world: int) -> bool:
    """`data.group_by_length`, default on whenever a step holds more than one list. It depends on the
    global batch only, so 1 x 8, 2 x 4 and 8 x 1 (micro-batch x accumulation x processes) train on
    the same lists (grouping off for a micro-batch of 1 made them differ)."""
    if r.data.group_by_length is not None:
        return r.data.group_by_length
    return r.train.per_device_batch_size * r.train.grad_accum * world > 1


def _ignore_preemption_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM/SIGUSR1: Slurm and `kill -- -PGID` signal the whole process
    group, and a worker dying first would end the run with "DataLoader worker killed" (exit 1) instead
    of the main process finishing its step, checkpointing and exiting 75. The main process still
    stops them (the iterator's shutdown, or their parent watchdog when it dies)."""
    import signal

    for name in ("SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


class MicroBatchStream:
    """The collated micro-batches of each optimizer step, from any step on. With `num_workers` > 0
    they are collated in DataLoader worker processes (ahead of the step, pinned on CUDA) so the
    collation overlaps the forward/backward; the mapped rows are shared, not copied, by the workers."""

    def __init__(self, rows: Sequence[dict], sampler: StepSampler, collate: Callable, rank: int, total_steps: int,
                 num_workers: int = 0, pin_memory: bool = False) -> None:
        self.rows, self.sampler, self.collate, self.rank = rows, sampler, collate, rank
        self.total, self.num_workers, self.pin = total_steps, num_workers, pin_memory
        self._it: Iterator[dict[str, torch.Tensor]] | None = None
        self._next_step = -1

    def _open(self, step: int) -> None:
        ds = _StepMicroBatches(self.rows, self.sampler, self.collate, self.rank, step, max(step, self.total))
        self._it = iter(torch.utils.data.DataLoader(
            ds, batch_size=None, shuffle=False, num_workers=self.num_workers, pin_memory=self.pin,
            prefetch_factor=max(2, self.sampler.grad_accum), persistent_workers=False,
            worker_init_fn=_ignore_preemption_signals))
        self._next_step = step

    def step(self, step: int) -> list[dict[str, torch.Tensor]]:
        if self.num_workers <= 0 or step >= self.total:
            return [collate_step(self.collate, [self.rows[i] for i in idx], step, idx, self.sampler.seed)
                    for idx in self.sampler.micro_batches(step, self.rank)]
        if self._it is None or step != self._next_step:
            self._open(step)  # first call, resume, or a step taken outside the stream
        assert self._it is not None
        out = [next(self._it) for _ in range(self.sampler.grad_accum)]
        self._next_step = step + 1
        return out

    def close(self) -> None:
        self._it = None


# ---- the cached path ------------------------------------------------------------------------------
T = TypeVar("T")


def main_first(env: Any, fn: Callable[[], T]) -> T:
    """Rank 0 runs `fn` (building what is missing) while the others wait; then they run it too (it
    only opens what rank 0 built, or builds it where the cache directory is not shared). A failure on
    rank 0 stops every rank instead of leaving them in the barrier."""
    err: BaseException | None = None
    out: Any = None
    if env.is_main:
        try:
            out = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
            err = e
    failed = env.all_reduce_sum([1.0 if err is not None else 0.0])[0] if env.world > 1 else float(err is not None)
    if err is not None:
        raise err
    if failed:
        raise LrtError("rank 0 failed to prepare the training data (its error is printed above)")
    return out if env.is_main else fn()


def cache_root(r: Recipe) -> Path:
    """`data.cache_dir`, or `<output_dir>/data-cache` (set `data.cache_dir` to share it between runs)."""
    return Path(resolve_path(r.data.cache_dir)) if r.data.cache_dir else Path(r.output_dir) / "data-cache"


def n_candidates(examples: Sequence[ListwiseExample]) -> np.ndarray:
    from lrt.data.cache import LazyExamples

    if isinstance(examples, LazyExamples):
        return examples.n_candidates
    return np.asarray([len(e.candidates) for e in examples], dtype=np.int64)


def max_identifiers(r: Recipe, train: Sequence[ListwiseExample], evals: Sequence[ListwiseExample]) -> int:
    """Identifiers needed: the longest list after the data.window cut (train, eval window)."""
    w = r.data.window
    n = int(np.minimum(n_candidates(train), w or 10**9).max())
    if len(evals):
        longest = int(n_candidates(evals).max())
        n = max(n, min(r.eval.window or w or longest, longest))
    return n


def encode_params(r: Recipe, template: PromptTemplate, id_token_ids: list[int] | None, include_target: bool) -> dict[str, Any]:
    """Every setting `encode_example` reads: part of the cache fingerprint."""
    return {"template": template, "scheme": r.identifier_scheme(), "id_token_ids": id_token_ids,
            "max_length": r.data.max_length, "window": r.data.window, "include_target": include_target}


@dataclass
class TrainData:
    """What the Trainer needs from the data layer."""

    train_examples: Sequence[ListwiseExample]
    eval_examples: Sequence[ListwiseExample]
    tok: Any
    template: PromptTemplate
    id_ids: list[int] | None
    rows: Sequence[dict] | None  # None: a sharded `lrt prep tokenize` left other shards to do
    lengths: np.ndarray | None
    cache_dir: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def _open_split(r: Recipe, env: Any, source: str, limit: int | None) -> Sequence[ListwiseExample]:
    from lrt.data.cache import open_examples

    t0 = time.perf_counter()
    exs, meta = main_first(env, lambda: open_examples(cache_root(r), resolve_path(source), r.data.split,
                                                       r.data.on_invalid, limit, r.data.limit))
    if meta.get("skipped") and env.is_main:
        log.warning("data %s: %s", source, meta["skip_summary"])
    log.debug("data %s: %d lists mapped from %s in %.2fs", source, len(exs), meta["dir"], time.perf_counter() - t0)
    return exs


def check_teacher_scores(r: Recipe, objective: Any, train: Sequence[ListwiseExample]) -> None:
    """Distillation terms need every training list's `teacher_scores`: one clear error, before training."""
    need = objective.teacher_score_terms
    if not need:
        return
    from lrt.data.cache import LazyExamples
    from lrt.data.schema import missing_teacher_scores

    missing = train.without_teacher_scores() if isinstance(train, LazyExamples) else [
        e.qid for e in train if e.teacher_scores is None]
    if missing:
        raise missing_teacher_scores(f"{r.data.train} ({len(missing)} of {len(train)} lists, e.g. qid "
                                     f"{missing[0]!r})", need)


def prepare_data(r: Recipe, env: Any, objective: Any, shard: tuple[int, int] | None = None) -> TrainData:
    """Load/validate the splits, load the tokenizer, probe identifiers, tokenise the training lists.

    Cached (default): every step goes through the on-disk stores, built by rank 0 first. `shard`
    = (K, I) builds only contiguous shard I of K of the encoded store (`lrt prep tokenize`).
    """
    from lrt.data.collate import IdentifierError, identifier_token_ids
    from lrt.modeling import load_tokenizer

    t0 = time.perf_counter()
    template = prompt_template(r)
    limit = None if r.data.window else max_candidates(r.identifier_scheme())  # type: ignore[arg-type]
    eval_src = r.eval.data or r.data.eval
    if r.data.cache:
        train = _open_split(r, env, r.data.train, limit)
        evals = _open_split(r, env, eval_src, limit) if eval_src else []
    else:
        train = load_split(r, r.data.train)
        evals = load_split(r, eval_src) if eval_src else []
    check_teacher_scores(r, objective, train)
    if r.eval.max_queries:
        evals = evals[: r.eval.max_queries]
    n = max_identifiers(r, train, evals)
    tok = load_tokenizer(r, n_identifiers=n)
    id_ids = None
    if objective.needs_scores or r.eval.every or r.eval.at_end:
        try:  # probe once; ranking losses need single-token ids, evaluation merely skips without them
            id_ids = identifier_token_ids(tok, template, n)
        except IdentifierError as e:
            if objective.needs_scores:
                raise
            if getattr(env, "is_main", True):  # said once, at the start: else every evaluation is skipped silently
                log.warning("eval: first-token evaluation cannot run, so eval.every/eval.at_end will be skipped "
                            "for the whole run: %s", e)
    if id_ids is not None and getattr(objective, "sequence_terms", None):
        from lrt.objective.lipo_k import check_substitution

        check_substitution(tok, template, n)  # lipo_k builds permuted answers by swapping identifier tokens
    t1 = time.perf_counter()
    enc_ids = id_ids if objective.needs_scores else None
    if not r.data.cache:
        rows: Any = encode_all(r, tok, template, train, enc_ids, objective.needs_target)
        lengths = np.asarray([len(x["input_ids"]) for x in rows], dtype=np.int64)
        return TrainData(train, evals, tok, template, id_ids, rows, lengths,
                         seconds={"load": t1 - t0, "encode": time.perf_counter() - t1})
    params = encode_params(r, template, enc_ids, objective.needs_target)
    kw = dict(max_length=r.data.max_length, id_token_ids=enc_ids, window=r.data.window,
              include_target=objective.needs_target)

    def encode(ex: ListwiseExample) -> dict[str, Any]:
        return encode_example(tok, template, ex, **kw).to_row()  # type: ignore[arg-type]

    root = cache_root(r)
    rows = main_first(env, lambda: ensure_encoded(root, train, tok, params, encode, r.data.num_proc, shard))
    return TrainData(train, evals, tok, template, id_ids, rows, rows.lengths if rows is not None else None, root,
                     seconds={"load": t1 - t0, "encode": time.perf_counter() - t1})


def ensure_encoded(root: Path, train: Any, tok: Any, params: dict[str, Any], encode: Callable[[ListwiseExample], dict],
                   num_proc: int, shard: tuple[int, int] | None = None) -> Any:
    """Open the encoded store of `train` under these params; build what is missing first."""
    from lrt.data import cache

    key = cache.encoded_key(train.key, tok, params)
    d = root / f"encoded-{key}"
    meta = {"key": key, "examples": train.key, "rows": len(train), "params": cache.stable_hash(params)[:16]}
    if cache._manifest(d) is None:
        k, ids = (shard[0], [shard[1]]) if shard else (cache.partial_shards(d) or 1, None)
        todo = [i for i in (ids if ids is not None else range(k)) if not cache.shard_done(d, k, i)]
        t0 = time.perf_counter()
        for i in todo:
            log.info("data cache: tokenising %s lists%s (num_proc %d) -> %s", len(train),
                     f", shard {i}/{k}" if k > 1 else "", num_proc, d)
            cache.build_encoded_shard(d, train, encode, k, i, num_proc)
        if not cache.finish_encoded(d, k, meta):
            log.info("data cache: shard(s) %s of %d done in %.1fs; the store completes when all %d are", todo, k,
                     time.perf_counter() - t0, k)
            return None
        log.info("data cache: %d lists tokenised in %.1fs -> %s", len(train), time.perf_counter() - t0, d)
    return cache.open_encoded(d)

