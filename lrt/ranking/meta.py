"""What an exported model directory holds for ranking: `lrt_reranker.json` (`RerankerMeta`) and the
tokenizer. Read by `lrt rerank`, written by `lrt export`; both sit above this layer, so neither
imports the other for it."""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from lrt.version import __version__
from lrt.errors import LrtError
from lrt.ranking.modes import default_mode, pair_mode

log = logging.getLogger("lrt")

META_FILE = "lrt_reranker.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class RerankerMeta:
    """What an exported checkpoint needs to rerank exactly as it was trained."""

    template: dict[str, Any]
    window: int
    stride: int
    max_length: int
    lrt_version: str = __version__
    # BOS as trained: "prepended" (lrt put the tokenizer's BOS first), "template" (the chat template
    # writes it) or "none"; None in exports older than the BOS policy. Pinned into the template below,
    # so the Reranker (HF or openai backend) adds BOS exactly as training did.
    bos: str | None = None
    rank_llm: str | None = None  # how rank_llm serves this model with the same prompt (rank_llm presets)
    mode: str = "first_token"  # a pair mode (lrt.ranking.modes): template is a PointwiseTemplate; window unused

    def __post_init__(self) -> None:
        if self.bos is not None and isinstance(self.template, dict) and not pair_mode(self.mode):
            self.template = {**self.template, "bos": "always" if self.bos == "prepended" else "never"}

    @property
    def default_mode(self) -> str:
        """How this export reranks unless told otherwise: its own pointwise scoring, else first-token."""
        return default_mode(self.mode)

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
