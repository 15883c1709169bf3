"""Fingerprints that name the tokenised-dataset cache's stores (lrt.data.cache).

Why a module of its own: what *names* a store (the data file's contents, the tokenizer, the lrt
version and the encoder's own source) is a question apart from how a store is written and read;
a stale cache cannot be picked up because any change here is another directory name.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from lrt.data.cache_check import file_digest
from lrt.errors import DataError

FORMAT_VERSION = 2  # bump when the layout of a store changes (2: piece digests in the manifest)
ENCODING_VERSION = 2  # bump when lrt encodes the same text differently (2: user text encoded as text)
_ENCODER_MODULES = ("lrt.data.collate", "lrt.data.prompts", "lrt.data.untrusted", "lrt.data.schema", "lrt.data.cache",
                    "lrt.data.cache_check", "lrt.data.fingerprint")


def stable_hash(obj: Any) -> str:
    """sha256 of a canonical JSON rendering (sorted keys; dataclasses and tuples as JSON)."""
    def default(o: Any) -> Any:
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return dataclasses.asdict(o)
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        if isinstance(o, Path):
            return str(o)
        return repr(o)

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=default).encode("utf-8")).hexdigest()


def source_fingerprint(source: str, split: str) -> str:
    """Contents of a data file (or of every file of a directory); a `datasets` source's own fingerprint."""
    p = Path(source)
    if p.is_file():
        return f"file:{file_digest(p)}:{p.stat().st_size}"
    if p.is_dir() and any(p.glob("*.parquet")):
        return "dir:" + stable_hash([(f.name, file_digest(f)) for f in sorted(p.glob("*.parquet"))])
    if p.suffix:
        raise DataError(f"{source}: data file not found (check the data paths in the recipe)")
    import datasets

    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as e:  # noqa: BLE001 - surface as one user-facing message
        raise DataError(f"{source}: cannot load as a `datasets` source ({type(e).__name__}: {e})") from None
    return f"datasets:{ds._fingerprint}"


def tokenizer_fingerprint(tok: Any) -> str:
    """Everything of a tokenizer that changes ids: the fast tokenizer's full JSON (vocabulary, merges,
    normalizer, added tokens), the chat template, special tokens and the class."""
    backend = getattr(tok, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tok.get_vocab().items()))
    init = {k: v for k, v in (getattr(tok, "init_kwargs", None) or {}).items()
            if not any(w in k for w in ("file", "name_or_path", "cache_dir", "commit_hash", "token"))
            or k in ("add_bos_token", "add_eos_token", "split_special_tokens")}
    extra = {"cls": type(tok).__name__, "chat_template": getattr(tok, "chat_template", None),
             "special": {k: str(v) for k, v in sorted(getattr(tok, "special_tokens_map", {}).items())},
             "eos": tok.eos_token, "bos": getattr(tok, "bos_token", None), "len": len(tok),
             # settings that change ids outside the backend JSON (tokenizer_config.json, set at load time)
             "settings": {k: getattr(tok, k, None) for k in ("split_special_tokens", "add_bos_token", "add_eos_token",
                                                               "add_prefix_space", "legacy", "do_lower_case")},
             "init": {k: repr(v) for k, v in sorted(init.items())},
             "added": [(int(i), str(t), bool(getattr(t, "special", False)), bool(getattr(t, "normalized", False)),
                        bool(getattr(t, "lstrip", False)), bool(getattr(t, "rstrip", False)))
                       for i, t in sorted((getattr(tok, "added_tokens_decoder", None) or {}).items())]}
    return hashlib.sha256(body.encode("utf-8") + stable_hash(extra).encode()).hexdigest()


def code_fingerprint() -> str:
    """The lrt version and the source of the encoder/prompt/schema modules."""
    import importlib

    from lrt.version import __version__  # read at call time (a test patches it)

    h = hashlib.sha256(f"{__version__}:{FORMAT_VERSION}:{ENCODING_VERSION}".encode())
    for name in _ENCODER_MODULES:
        h.update(Path(importlib.import_module(name).__file__).read_bytes())  # type: ignore[arg-type]
    return h.hexdigest()
