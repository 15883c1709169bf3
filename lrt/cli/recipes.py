"""`lrt recipes`: list the recipes, prep jobs and launch files shipped in the package, and copy one out.

    lrt recipes list
    lrt recipes copy first-mistral-7b ./my.yaml      # or a prep job: lrt recipes copy dl19-eval ./dl19.yaml
    lrt recipes reference                             # every recipe key: type, default, description (Markdown)

A copy stays valid from its new place: relative paths in a shipped file resolve against its folder
inside `lrt/resources/`. The copy rewrites each one: a file that ships with the package becomes an
`lrt:resources/...` reference; anything else (data you prepare, run outputs) keeps its place relative
to the shipped layout's root, now the copy's folder (`../data/rankzephyr/data.parquet` in
`recipes/x.yaml` becomes `data/rankzephyr/data.parquet` beside the copy). So a recipe and the prep job
that feeds it, copied into one folder, still meet.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from lrt.configio import RESOURCES
from lrt.errors import LrtError
from lrt.recipes import KINDS, rewrite, shipped, summary


def list_(argv: list[str]) -> int:
    by = shipped()
    for folder, kind in KINDS.items():
        print(f"{kind}s ({RESOURCES / folder}):")
        for name, p in by.items():
            if p.parent.name == folder:
                print(f"  {name:<32} {summary(p)[:90]}")
    print("copy one: lrt recipes copy NAME DEST   (e.g. lrt recipes copy first-mistral-7b ./my.yaml)")
    return 0


def copy(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lrt recipes copy", description="Copy a shipped recipe/job/launch file.")
    p.add_argument("name", help="e.g. first-mistral-7b, dl19-eval, ds_zero3.json (see `lrt recipes list`)")
    p.add_argument("dest", help="file or existing directory")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    a = p.parse_args(argv)
    by = shipped()
    name = a.name.removesuffix(".yaml") if a.name.endswith(".yaml") else a.name
    name = Path(name).name if "/" in name else name
    if name not in by:
        from lrt.suggest import did_you_mean

        raise LrtError(f"no shipped recipe, prep job or launch file named {a.name!r}"
                       + did_you_mean(name, by) + "; see `lrt recipes list`")
    src = by[name]
    dest = Path(a.dest)
    if dest.is_dir():
        dest = dest / src.name
    if dest.exists() and not a.force:
        raise LrtError(f"{dest} exists; choose another name or add --force")
    if not dest.parent.is_dir():
        raise LrtError(f"{dest.parent}: directory does not exist; create it first")
    text = rewrite(src)
    dest.write_text(text, encoding="utf-8")
    if src.suffix in (".sh", ".sbatch"):
        shutil.copymode(src, dest)
    print(f"copied {KINDS[src.parent.name]} {name} -> {dest}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv[0] == "list":
        return list_(argv[1:])
    if argv[0] == "copy":
        return copy(argv[1:])
    if argv[0] == "reference":
        from lrt.recipe_reference import reference_markdown

        print(reference_markdown(), end="")
        return 0
    raise LrtError(f"lrt recipes: unknown action {argv[0]!r}; use `lrt recipes list`, `lrt recipes copy NAME DEST` "
                   "or `lrt recipes reference`")
