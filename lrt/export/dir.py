"""Export directories: written whole or not at all, never mixed, and saying what they hold.

An export is written into a temporary sibling directory (`.NAME.lrt-tmp-PID`), completed with
`lrt_export.json` (its kind and the list of files lrt wrote), then put in place by one atomic
rename (an existing destination is swapped with `renameat2(RENAME_EXCHANGE)` where the kernel has
it, so a kill -9 at any moment leaves the old export or the new one, never a mixture). A
destination holding another kind of export (adapter-only, full, seq-cls) or files lrt did not
write is refused unless `--overwrite` asks to replace it whole. The file list is also what
`lrt export --push-to-hub` uploads: only those, only regular files, never a symlink.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator

from lrt.errors import LrtError

log = logging.getLogger("lrt")

MANIFEST = "lrt_export.json"
KINDS = ("full", "adapter-only", "seq-cls")
# what transformers/PEFT/lrt write into an export (for exports older than the manifest)
KNOWN_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
               "adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt",
               "added_tokens.json", "lrt_reranker.json", "lrt_seq_cls.json", "README.md", "NOT_MERGED.txt", MANIFEST)


def kind_of(d: Path) -> str | None:
    """What an existing directory holds: an export kind, "empty", or None (not an lrt export)."""
    if not any(d.iterdir()):
        return "empty"
    m = d / MANIFEST
    if m.is_file() and not m.is_symlink():
        try:
            k = json.loads(m.read_text(encoding="utf-8")).get("kind")
        except (ValueError, OSError, AttributeError):
            k = None
        if k in KINDS:
            return k
    if (d / "lrt_seq_cls.json").is_file():
        return "seq-cls"
    if (d / "lrt_reranker.json").is_file() or (d / "NOT_MERGED.txt").is_file():
        return "adapter-only" if (d / "adapter_config.json").is_file() and not (d / "config.json").is_file() \
            else "full"
    return None


def record(d: Path, kind: str) -> None:
    """Write `lrt_export.json`: the kind and every regular file under `d` (the files lrt just wrote)."""
    files = sorted(p.relative_to(d).as_posix() for p in d.rglob("*")
                   if p.is_file() and not p.is_symlink() and p.name != MANIFEST)
    (d / MANIFEST).write_text(json.dumps({"kind": kind, "files": files}, indent=1) + "\n", encoding="utf-8")


def _same_or_inside(a: Path, b: Path) -> bool:
    """a is b, or a lies inside b (after resolving links)."""
    a, b = Path(os.path.realpath(a)), Path(os.path.realpath(b))
    return a == b or b in a.parents


def check_destination(out: Path, kind: str, overwrite: bool, protect: tuple[Path, ...] = ()) -> None:
    """Before any work: refuse a destination that is (or holds, or lies in) a source in `protect`,
    a file, a non-lrt directory or another kind of export; `overwrite` allows the last two (replaced
    whole)."""
    out = Path(out)
    for src in protect:
        if _same_or_inside(out, src) or _same_or_inside(src, out):
            raise LrtError(f"--out {out}: is (or contains, or lies inside) the source {src}: exporting there would "
                           "overwrite what is being read; choose another --out directory")
    if out.is_symlink() and not out.exists():
        raise LrtError(f"--out {out}: a dangling symlink; remove it or choose another --out directory")
    if out.exists() and not out.is_dir():
        raise LrtError(f"--out {out}: is a file, not a directory; choose a directory path")
    if not out.exists():
        return
    have = kind_of(out)
    if have in ("empty", kind) or overwrite:
        if have not in ("empty", None):
            log.info("--out %s: replacing the %s export there (atomically, as a whole)", out, have)
        return
    what = f"a {have} export" if have else "files that are not an lrt export"
    raise LrtError(f"--out {out}: already holds {what}; this is a {kind} export and the two must not mix: choose "
                   "another (or an empty) --out directory, or pass --overwrite to replace it whole")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    return False


def _remove_stale(out: Path) -> None:
    """Temp dirs of earlier exports to `out` whose process is gone (killed mid-export)."""
    for p in out.parent.glob(f".{out.name}.lrt-*-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
                continue  # still running: not ours to remove
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def staged(out: str | Path, kind: str) -> Iterator[Path]:
    """Yield a temporary sibling of `out` to write the export into; on success record its files and
    put it in place atomically (replacing `out` whole); on failure remove it, `out` untouched."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    tmp = out.parent / f".{out.name}.lrt-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        record(tmp, kind)
        from lrt.train.checkpoint import fault

        fault("in_export", 0)  # test hook (LRT_FAULT=kill:in_export:0): the export is written, not yet in place
        if out.exists() and _exchange(tmp, out):
            shutil.rmtree(tmp)  # now the old export
        elif out.exists():  # no RENAME_EXCHANGE: two renames; a kill between them keeps the old one as .old
            old = out.parent / f".{out.name}.lrt-old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def upload_list(folder: Path) -> list[str]:
    """The files `--push-to-hub` uploads: those lrt recorded (or, in an export without the record,
    the names transformers/PEFT/lrt write), each a regular file inside `folder`, never a symlink."""
    m = folder / MANIFEST
    if m.is_file() and not m.is_symlink():
        try:
            names = [str(x) for x in json.loads(m.read_text(encoding="utf-8"))["files"]] + [MANIFEST]
        except (ValueError, OSError, KeyError, TypeError) as e:
            raise LrtError(f"{m}: unreadable ({e}); re-export the model with `lrt export`") from None
    else:
        names = [p.relative_to(folder).as_posix() for p in folder.rglob("*")
                 if p.name in KNOWN_FILES and p.relative_to(folder).parts[0] in (p.name, "adapter")]
    root = Path(os.path.realpath(folder))
    out = []
    for n in sorted(set(names)):
        p = folder / n
        if Path(n).is_absolute() or ".." in Path(n).parts:
            raise LrtError(f"{folder}/{MANIFEST}: lists {n!r}, a path outside the export; re-export the model")
        if any(q.is_symlink() for q in [p, *p.parents] if folder in q.parents):
            raise LrtError(f"{p}: is a symlink (lrt writes regular files): refusing to upload what it points to; "
                           "replace it with the exported file or re-export the model")
        if not p.is_file() or root not in Path(os.path.realpath(p)).parents:
            raise LrtError(f"{p}: missing or not a regular file, but the export lists it; re-export the model")
        out.append(n)
    if not out:
        raise LrtError(f"{folder}: no export files to upload; run `lrt export RUN_DIR --out DIR` first")
    return out
