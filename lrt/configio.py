"""The one config machinery behind recipes (`lrt/config.py`) and prep jobs (`lrt/prep/config.py`).

Reading a YAML mapping, dotted command-line overrides, path resolution, did-you-mean and the
formatting of pydantic errors live here once, so a recipe and a job fail the same way: every problem
at once, each naming its dotted key and the fix, raised as one `ConfigError` (no traceback).

Paths. A relative path written in a recipe or job file resolves against the directory of that file
(lexically, so `recipes/../data` is the `data/` beside the `recipes/` link of a clone); a relative
path given in a command-line override resolves against the current directory; absolute paths are
kept; `lrt:REL` names a file shipped inside the installed package (`lrt:resources/launch/ds_zero3.json`)
and is kept as written until it is used (`resolve_path`).
"""
from __future__ import annotations

import math
import os
import typing
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from lrt.errors import ConfigError
from lrt.suggest import did_you_mean as _hint

PACKAGE_DIR = Path(__file__).resolve().parent
RESOURCES = PACKAGE_DIR / "resources"


# ---------------------------------------------------------------------------------------------
# paths


def resolve_path(p: str) -> str:
    """`lrt:assets/x` -> a path inside the installed package; anything else is returned as is."""
    return str(PACKAGE_DIR / p[4:]) if isinstance(p, str) and p.startswith("lrt:") else p


def looks_local(value: str) -> bool:
    """A path rather than a hub id: explicit prefix or a data/config file suffix."""
    return value.startswith((".", "/", "~")) or Path(value).suffix.lower() in LOCAL_SUFFIXES


LOCAL_SUFFIXES = {".jsonl", ".json", ".parquet", ".gz", ".tsv", ".txt", ".trec", ".csv", ".yaml", ".yml", ".sqlite"}


def anchor(value: Any, base: Path, kind: str = "path") -> Any:
    """Make one relative path absolute against `base` (lexically normalised).

    kind "path": always a local path (output dirs, data files, launch configs).
    kind "maybe_hub": a model/dataset that may be a hub id: anchored only when it looks local or exists.
    kind "resume": `none` and `auto` are words, anything else a checkpoint path.
    """
    if not isinstance(value, str) or not value or value.startswith("lrt:") or os.path.isabs(value):
        return value
    if kind == "resume" and value in ("none", "auto"):
        return value
    expanded = os.path.expanduser(value)
    if expanded != value:
        return os.path.normpath(expanded)
    cand = os.path.normpath(os.path.join(str(base), value))
    if kind == "maybe_hub" and not (looks_local(value) or os.path.exists(cand)):
        return value
    return cand


def anchor_fields(raw: dict[str, Any], fields: dict[str, str], base: Path) -> None:
    """Anchor the path-valued dotted `fields` ({"data.train": "path", ...}) of `raw` in place."""
    for dotted, kind in fields.items():
        node: Any = raw
        keys = dotted.split(".")
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and keys[-1] in node:
            node[keys[-1]] = anchor(node[keys[-1]], base, kind)


# ---------------------------------------------------------------------------------------------
# reading


def read_mapping(path: str | Path, what: str, sections: str) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; every failure is one `ConfigError` naming the file."""
    p = Path(path)
    src = str(p)
    if not p.exists():
        raise ConfigError([f"{what} file {src!r} not found"], src)
    if p.is_dir():
        raise ConfigError([f"{src!r} is a directory, not a {what} YAML file; name the .yaml file inside it"], src)
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = p.read_bytes()[: e.start].count(b"\n") + 1
        raise ConfigError([f"line {line}: not UTF-8 text (byte 0x{p.read_bytes()[e.start]:02x}); save the {what} as "
                           "UTF-8"], src) from None
    except OSError as e:
        raise ConfigError([f"cannot read the {what}: {e.strerror or e}"], src) from None
    try:
        raw = yaml.safe_load(text.removeprefix("\ufeff"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError([f"invalid YAML{where}: {getattr(e, 'problem', None) or e}"], src) from None
    if raw is None:
        raise ConfigError([f"the {what} file is empty; it needs the sections {sections}"], src)
    if not isinstance(raw, dict):
        raise ConfigError([f"the {what} must be a YAML mapping of sections ({sections}), got {type(raw).__name__}"], src)
    return raw


# ---------------------------------------------------------------------------------------------
# dotted overrides


class _KeyError(ValueError):
    pass


def split_key(key: str) -> list[str | int]:
    """`loss[1].params.k` -> ["loss", 1, "params", "k"]; malformed keys raise with the reason."""
    if not key or key.strip() != key:
        raise _KeyError("empty key or surrounding spaces")
    parts: list[str | int] = []
    for chunk in key.split("."):
        if chunk == "":
            raise _KeyError("empty section name (two dots, or a leading/trailing dot)")
        name, bracket, rest = chunk.partition("[")
        if "]" in name:
            raise _KeyError(f"unmatched ']' in {chunk!r}")
        if name:
            parts.append(name)
        elif not parts:
            raise _KeyError(f"{chunk!r} starts with an index; name the list first, e.g. loss[0]")
        while bracket:
            idx, close, rest = rest.partition("]")
            if not close:
                raise _KeyError(f"unclosed '[' in {chunk!r}; write e.g. loss[1].weight")
            try:
                i = int(idx)
            except ValueError:
                raise _KeyError(f"[{idx}] is not a list index; use a number, e.g. loss[0]") from None
            if i < 0:
                raise _KeyError(f"[{i}]: negative indices are not supported; count from 0")
            parts.append(i)
            if rest and not rest.startswith("["):
                raise _KeyError(f"unexpected {rest!r} after [{idx}]; separate keys with '.', e.g. loss[0].weight")
            bracket, rest = (rest[:1], rest[1:]) if rest else ("", "")
    return parts


def _show(parts: list[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(parts))


def parse_value(text: str) -> Any:
    """A YAML scalar/flow value; `key=` means null; unparsable text is kept as a string."""
    if text.strip() == "":
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str], example: str = "train.lr=1e-5",
                    base: Path | None = None, path_fields: dict[str, str] | None = None) -> list[str]:
    """Apply `a.b=v`, `loss[1].weight=5`, `model.lora={r: 8}` to `raw` in place; return the problems.

    Values given here are relative to the current directory (`base`, default cwd) when they are paths.
    """
    problems: list[str] = []
    base = Path.cwd() if base is None else base
    for ov in overrides:
        key, sep, val = ov.partition("=")
        if not sep or not key.strip():
            problems.append(f"override {ov!r}: expected KEY=VALUE, e.g. {example}")
            continue
        try:
            parts = split_key(key.strip())
        except _KeyError as e:
            problems.append(f"override {ov!r}: malformed key: {e}")
            continue
        value = parse_value(val)
        plain = ".".join(p for p in parts if isinstance(p, str))
        if path_fields and plain in path_fields and all(isinstance(p, str) for p in parts):
            value = anchor(value, base, path_fields[plain])
        err = _set(raw, parts, value)
        if err:
            problems.append(f"override {ov!r}: {err}")
    return problems


def _set(root: dict[str, Any], parts: list[str | int], value: Any) -> str | None:
    cur: Any = root
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        here = _show(parts[:i]) or "(top level)"
        if isinstance(p, int):
            if not isinstance(cur, list):
                return f"{here} is not a list (it holds {_brief(cur)}); drop the [{p}]"
            if p >= len(cur):
                return (f"index [{p}] out of range: {here} has {len(cur)} item(s)"
                        + (f" (use 0..{len(cur) - 1})" if cur else ""))
            if last:
                cur[p] = value
            else:
                cur = cur[p]
            continue
        if isinstance(cur, list):
            return (f"{here} is a list: index it, e.g. {here}[0].{p}" if here != "(top level)" else "bad key")
        if not isinstance(cur, dict):
            return (f"{here} is not a section (it holds {_brief(cur)}); remove the earlier override of {here} "
                    f"or set the whole section, e.g. {here}={{{p}: ...}}")
        if last:
            cur[p] = value
        else:
            nxt = cur.get(p)
            if nxt is None:
                nxt = cur[p] = [] if isinstance(parts[i + 1], int) else {}
            cur = nxt
    return None


def _brief(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


# ---------------------------------------------------------------------------------------------
# checks and messages


def did_you_mean(word: str, options: Iterable[str], prefix: str = "") -> str:
    """`(did you mean 'a.b'?)`, or the allowed names when nothing is close."""
    options = sorted(set(options))
    hint = _hint(word, options, cutoff=0.5, prefix=prefix)
    if hint:
        return hint
    return f"; allowed here: {', '.join(options)}" if options else ""


def non_finite(raw: Any, where: str = "") -> list[str]:
    """Every NaN/Infinity anywhere in the raw config (YAML `.inf`, `.nan`), by dotted key."""
    out: list[str] = []
    if isinstance(raw, dict):
        for k, v in raw.items():
            out += non_finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(raw, (list, tuple)):
        for i, v in enumerate(raw):
            out += non_finite(v, f"{where}[{i}]")
    elif isinstance(raw, float) and not math.isfinite(raw):
        out.append(f"{where or '(value)'}: {raw} is not a finite number; use a finite value")
    return out


def _members(ann: Any) -> list[type[BaseModel]]:
    """BaseModel classes inside an annotation (Optional, Union, list, Annotated)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    out: list[type[BaseModel]] = []
    for a in typing.get_args(ann):
        out += _members(a)
    return out


def _tag_of(m: type[BaseModel]) -> Any:
    f = m.model_fields.get("kind")
    args = typing.get_args(f.annotation) if f is not None else ()
    return args[0] if args else None


def walk(root: type[BaseModel], loc: tuple) -> tuple[type[BaseModel] | None, list[str | int]]:
    """The model at a pydantic error location, and the user-facing path (union tags removed)."""
    model: Any = root
    path: list[str | int] = []
    parts = list(loc)
    while parts:
        key = parts.pop(0)
        if isinstance(key, int):
            path.append(key)
            continue
        path.append(key)
        field = getattr(model, "model_fields", {}).get(key) if model is not None else None
        if field is None:
            return None, path + parts
        members = _members(field.annotation)
        if len(members) > 1:
            while parts and isinstance(parts[0], int):
                path.append(parts.pop(0))
            tag = parts[0] if parts else None
            by_tag = {_tag_of(m): m for m in members}
            if tag in by_tag:
                parts.pop(0)
                model = by_tag[tag]
            else:
                model = None
        else:
            model = members[0] if members else None
    return model, path


def format_errors(err: ValidationError, root: type[BaseModel], tags: dict[str, list[str]] | None = None) -> list[str]:
    """pydantic errors -> one line each: dotted key, what is wrong, the fix (did-you-mean)."""
    out: list[str] = []
    for e in err.errors():
        loc = tuple(e["loc"])
        kind = e["type"]
        if kind == "value_error" and not loc:  # model-level cross-field problems, one per line
            out.extend(str(e["msg"]).removeprefix("Value error, ").split("\n"))
            continue
        if kind == "extra_forbidden":
            parent, path = walk(root, loc[:-1])
            names = [f for f in (parent.model_fields if parent else {}) if f != "kind"]
            prefix = _show(path) + "." if path else ""
            out.append(f"{_show(path + [loc[-1]])}: unknown key{did_you_mean(str(loc[-1]), names, prefix)}")
            continue
        _, path = walk(root, loc)
        where = _show(path) or "(top level)"
        if kind == "union_tag_invalid":
            opts = (tags or {}).get(str(loc[0]), [])
            out.append(f"{where}.kind: unknown kind {e['ctx']['tag']!r}{did_you_mean(str(e['ctx']['tag']), opts)}")
        elif kind == "union_tag_not_found":
            out.append(f"{where}.kind: missing; choose one of {', '.join((tags or {}).get(str(loc[0]), []))}")
        elif kind == "missing":
            out.append(f"{where}: required key is missing")
        elif kind == "value_error":
            out.append(f"{where}: {str(e['msg']).removeprefix('Value error, ')}")
        else:
            out.append(f"{where}: {e['msg']} (got {_brief(e.get('input'))})"[:400])
    return out


def validate(model: type[BaseModel], raw: dict[str, Any], source: str, problems: list[str],
             tags: dict[str, list[str]] | None = None) -> Any:
    """Validate `raw`; raise one ConfigError with the earlier `problems` plus every schema problem."""
    problems = problems + non_finite(raw)
    try:
        obj = model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(problems + [p for p in format_errors(e, model, tags) if not _dup(p, problems)], source) from None
    if problems:
        raise ConfigError(problems, source)
    return obj


def _dup(p: str, problems: list[str]) -> bool:
    """A schema complaint about a key already reported as non-finite."""
    key = p.split(":", 1)[0]
    return any(q.startswith(key + ":") and "not a finite number" in q for q in problems)
