"""A dispatch-mode guard that proves a training step never materialises full-vocabulary logits.

Why a `TorchDispatchMode` and not a memory number: RSS peaks are noisy and only show *that*
memory grew; the dispatcher sees every tensor every aten op produces (forward, autograd backward,
custom `autograd.Function`s, optimizer foreach kernels), so a test can name the op and the shape
that broke the rule. Views (`t`, `view`, `expand`, ...) share storage and cost nothing, so they are
skipped: `weight.T` is `[H, V]` but allocates no memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


@dataclass(frozen=True)
class TensorRecord:
    """One tensor an op allocated: the op's name and the tensor's shape and dtype."""

    op: str
    shape: tuple[int, ...]
    dtype: torch.dtype


class TensorRecorder(TorchDispatchMode):
    """Records the shape of every non-view tensor produced while the mode is active.

    Use as `with TensorRecorder() as rec: step()`; then `rec.records`. Recording shapes only (not
    the tensors) keeps memory flat and changes no numerics.
    """

    def __init__(self) -> None:
        super().__init__()
        self.records: list[TensorRecord] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if not getattr(func, "is_view", False):
            name = str(func)
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self.records.append(TensorRecord(name, tuple(t.shape), t.dtype))
        return out


def vocab_rows(shape: Sequence[int], vocab: int) -> int:
    """Rows of a tensor whose last dim is the vocabulary (numel / V); 0 if the last dim is not V."""
    if not shape or shape[-1] != vocab:
        return 0
    n = 1
    for d in shape[:-1]:
        n *= d
    return n


def vocab_violations(
    records: Iterable[TensorRecord],
    vocab: int,
    max_rows: int,
    seq_dims: Sequence[int] = (),
    exempt_shapes: Iterable[Sequence[int]] = (),
) -> list[tuple[TensorRecord, str]]:
    """Tensors that look like logits over more than `max_rows` positions.

    Two rules: (1) a tensor whose last dim is V must have numel / V <= max_rows (one chunk of the
    chunked cross-entropy); (2) no tensor may have a dim equal to V together with a dim in
    `seq_dims` (T or B*T: a per-position vocabulary tensor in any layout). `exempt_shapes` are
    compared as multisets, for parameter-shaped tensors such as a `[H, V]` transposed copy of the
    LM head weight, which are O(weight) and not O(sequence).
    """
    exempt = {tuple(sorted(s)) for s in exempt_shapes}
    seq = set(seq_dims)
    bad: list[tuple[TensorRecord, str]] = []
    for r in records:
        if vocab not in r.shape or tuple(sorted(r.shape)) in exempt:
            continue
        rows = vocab_rows(r.shape, vocab)
        if rows > max_rows:
            bad.append((r, f"{rows} rows of vocabulary-sized logits > chunk {max_rows}"))
        elif seq & {d for i, d in enumerate(r.shape) if i != r.shape.index(vocab)}:
            bad.append((r, "vocabulary dim next to a sequence dim"))
    return bad


def max_vocab_rows(records: Iterable[TensorRecord], vocab: int) -> int:
    """Largest numel / V over tensors whose last dim is V (the biggest logits block seen)."""
    return max((vocab_rows(r.shape, vocab) for r in records), default=0)


class SavedTensorBytes:
    """Bytes of the distinct tensors autograd saves for backward while the block runs (the
    activation memory of a step), parameters excluded.

    A `saved_tensors_hooks` pair that records each saved tensor's storage once and returns the
    tensor unchanged, so the step computes exactly what it would without it. Non-reentrant
    gradient checkpointing pushes its own hooks inside each checkpointed layer: there only the
    layer inputs reach this hook, which is exactly what checkpointing keeps alive.
    """

    def __init__(self, exclude: Iterable[int] = ()) -> None:
        self.exclude = set(exclude)  # storage data_ptrs not to count (parameters)
        self._seen: dict[int, int] = {}
        self._ctx: Any = None

    @property
    def nbytes(self) -> int:
        return sum(self._seen.values())

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in self.exclude:
            self._seen[ptr] = st.nbytes()
        return t

    def __enter__(self) -> "SavedTensorBytes":
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)
