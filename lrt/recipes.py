"""The recipes, prep jobs and launch files shipped in the package, and how a copy of one stays valid.

A copy stays valid from its new place: relative paths in a shipped file resolve against its folder
inside `lrt/resources/`. `rewrite` re-anchors each one: a file that ships with the package becomes an
`lrt:resources/...` reference; anything else (data you prepare, run outputs) keeps its place relative
to the shipped layout's root, now the copy's folder (`../data/rankzephyr/data.parquet` in
`recipes/x.yaml` becomes `data/rankzephyr/data.parquet` beside the copy). So a recipe and the prep job
that feeds it, copied into one folder, still meet.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from lrt.configio import RESOURCES, read_mapping
from lrt.errors import LrtError

KINDS = {"recipes": "recipe", "data_prep": "prep job", "launch": "launch file"}


def shipped() -> dict[str, Path]:
    """name -> file, for every shipped recipe (`first-mistral-7b`), prep job and launch file."""
    out: dict[str, Path] = {}
    for folder in KINDS:
        for p in sorted((RESOURCES / folder).glob("*")):
            if p.is_file() and p.suffix in (".yaml", ".json", ".sh", ".sbatch"):
                out.setdefault(p.stem if p.suffix == ".yaml" else p.name, p)
    return out


def summary(p: Path) -> str:
    """First comment line of a shipped file."""
    for line in p.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if s.startswith("#") and not s.startswith("#!") and not s.startswith("# Paths:"):
            return s.lstrip("# ").strip()
    return ""


def rewrite(src: Path) -> str:
    """The text of shipped `src` with its relative path values re-anchored for a copy (comments kept)."""
    from lrt.config import PATH_FIELDS as RECIPE_PATHS
    from lrt.prep.config import PATH_FIELDS as JOB_PATHS

    text = src.read_text(encoding="utf-8")
    if src.suffix != ".yaml":
        return text
    fields = JOB_PATHS if src.parent.name == "data_prep" else RECIPE_PATHS
    raw = read_mapping(src, "recipe", "...")
    for dotted, kind in fields.items():
        node = raw
        for k in dotted.split("."):
            node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, str) or not node or node.startswith("lrt:") or os.path.isabs(node):
            continue
        if kind == "resume" and node in ("none", "auto"):
            continue
        target = os.path.normpath(os.path.join(str(src.parent), node))
        if kind == "maybe_hub" and not (node.startswith(".") or os.path.exists(target)):
            continue  # a hub id
        rel = os.path.relpath(target, str(RESOURCES))
        if rel.startswith(".."):
            raise LrtError(f"{src}: {dotted}={node!r} points outside the shipped resources")
        new = f"lrt:resources/{rel}" if os.path.exists(target) else rel
        text = re.sub(rf"(:\s*)['\"]?{re.escape(node)}['\"]?(?=\s|$)", lambda m: m.group(1) + new, text)
    return text
