"""`lrt validate RECIPE [key=value ...]`: check a recipe (types, unknown keys, conflicts, files, the
data's rows and the model checks) without training."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lrt validate", description="Validate a recipe without training.")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-5")
    p.add_argument("--no-file-check", action="store_true",
                   help="skip checking that local data files exist (and the model checks, which read them)")
    p.add_argument("--show-prompt", action="store_true", help="print one rendered training sequence and its tokens")
    p.add_argument("--sample", type=int, default=64, help="training lists the model checks encode (default 64)")
    p.add_argument("--max-unknown-share", type=float, default=0.2,
                   help="fail above this share of <unk> tokens in the data's text (default 0.2; warns above 0.01)")
    a = p.parse_intermixed_args(argv)  # options may come before or after the overrides
    from lrt.config import load_recipe

    r = load_recipe(a.recipe, a.overrides, check_files=not a.no_file_check)
    rows = "" if a.no_file_check else _check_data(r)
    checks = None
    if not a.no_file_check:
        from lrt.train.preflight import preflight

        checks = preflight(r, sample=max(1, a.sample), max_unknown_share=a.max_unknown_share)
    terms = ", ".join(f"{t.weight} x {t.name}" for t in r.loss)
    from lrt.families import of_recipe

    scoring = of_recipe(r).validate_text(r)
    print(f"ok: {a.recipe} (model {r.model.name_or_path}; loss {terms}; {scoring}){rows}")
    if checks is not None:
        for line in checks.lines:
            print(f"  {line}")
        for w in checks.warnings:
            print(f"warning: {w}", file=sys.stderr)
        if a.show_prompt and checks.prompt is not None:
            print(f"--- one training sequence ({checks.prompt_tokens} tokens) ---\n{checks.prompt}\n---")
    return 0


def _check_data(r) -> str:  # noqa: ANN001 - a Recipe
    """Every row of the local train/eval data, streamed, as training would read it (file:line errors)."""
    from pathlib import Path

    from lrt.config import resolve_path
    from lrt.data.prompts import max_candidates
    from lrt.data.schema import validate_source

    from lrt.losses.registry import TEACHER_SCORE_LOSSES

    limit = None if r.data.window else max_candidates(r.identifier_scheme())
    distill = [t.name for t in r.loss if t.name in TEACHER_SCORE_LOSSES]  # need the train lists' teacher_scores
    out = []
    for key, src in (("data.train", r.data.train), ("eval data", r.eval.data or r.data.eval)):
        if src and Path(resolve_path(src)).exists():  # hub ids are left to `datasets` at training time
            n, rep = validate_source(resolve_path(src), on_invalid=r.data.on_invalid, max_candidates=limit,
                                     split=r.data.split, need_teacher_scores=distill if key == "data.train" else ())
            out.append(f"{key}: {n} valid rows" + (f", {rep.skipped} skipped" if rep.skipped else ""))
    return f"; {'; '.join(out)}" if out else ""
