"""`lrt prep`: run a data-prep job (one shard of it), or merge finished shards.

    lrt prep JOB.yaml [key=value ...] [--num-shards K --shard-id I] [--force] [--check]
    lrt prep merge OUT_DIR

A shard imports its rows (round-robin by input position), labels them with the teacher through the
call cache, then writes rows, call log and, last, its card. Re-running a killed shard resumes from
the cache; re-running a finished shard is a no-op. With one shard the merge happens automatically.
Tokenising the result for training (`datasets.map(num_proc=...)`) belongs to the training data
loader and is not done here.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from lrt.data.schema import ListwiseExample
from lrt.errors import DataError, LrtError
from lrt.prep import output
from lrt.prep.config import (OPERATIONAL, BeirSource, CanonicalSource, ConversationsSource, FullrankSource, JobCfg,
                             TrecSource, load_job)
from lrt.prep.importers import Imported, RunSource
from lrt.prep.teachers import Teacher, stable_hash
from lrt.prep.windows import build_labels, passes_needed
from lrt.version import __version__

log = logging.getLogger("lrt.prep")
__all__ = ["JobCfg", "load_job", "run_shard", "make_teacher", "import_source", "merge"]
merge = output.merge


def fingerprint(cfg: JobCfg) -> str:
    """Hash of what decides the output (not where it goes, not speed knobs such as concurrency)."""
    def strip(d: Any) -> Any:
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if k not in OPERATIONAL}
        return d
    # labels.teacher_scores only when on: jobs written before it keep their fingerprint
    exclude: dict[str, Any] = {"name": True, "description": True, "output": True, "cache": True}
    if not cfg.labels.teacher_scores:
        exclude["labels"] = {"teacher_scores"}
    if cfg.split is None:
        exclude["split"] = True
    return stable_hash(strip(cfg.model_dump(exclude=exclude)))[:16]


def import_source(cfg: JobCfg, num_shards: int = 1, shard_id: int = 0, source: RunSource | None = None,
                  exclude: frozenset[str] = frozenset()) -> Imported:
    """The source's lists (this shard's); `source`/`exclude` come from `split_source` for a split job."""
    s = cfg.source
    kw = dict(on_invalid=s.on_invalid, limit=s.limit, num_shards=num_shards, shard_id=shard_id)
    if isinstance(s, FullrankSource):
        from lrt.prep.importers import import_fullrank
        return import_fullrank(s.path, corpus=s.corpus, queries=s.queries, synthetic=s.synthetic_text, **kw)
    if isinstance(s, TrecSource):
        from lrt.prep.importers import import_trec
        return import_trec(s.run, topics=s.topics, corpus=s.corpus, qrels=s.qrels, depth=s.depth,
                           synthetic=s.synthetic_text, source=source, exclude=exclude, **kw)
    if isinstance(s, BeirSource):
        from lrt.prep.importers import import_beir
        assert s.run is not None  # cross_checks
        return import_beir(s.path, run=s.run, qrels=s.qrels, depth=s.depth, source=source, exclude=exclude, **kw)
    if isinstance(s, ConversationsSource):
        from lrt.prep.conversations import import_conversations
        return import_conversations(s.path, split=s.split, **kw)
    assert isinstance(s, CanonicalSource)
    from lrt.prep.importers import import_canonical
    return import_canonical(s.path, **kw)


def split_source(cfg: JobCfg) -> tuple[RunSource | None, frozenset[str], dict[str, str]]:
    """(the run source, held-out qids, query texts) of a split job; (None, {}, {}) without `split`.

    Read before sharding: the split must be the same in every shard, so it is drawn over all qids.
    """
    from lrt.io.trec import read_topics
    from lrt.prep.importers import beir_paths, read_run_source
    from lrt.prep.split import choose_held_out

    s = cfg.source
    if cfg.split is None:
        return None, frozenset(), {}
    if isinstance(s, BeirSource):
        queries, _, qrels = beir_paths(s.path, s.qrels)
        src = read_run_source(s.run, qrels, only_judged=True, limit=s.limit)
    else:
        assert isinstance(s, TrecSource) and s.topics is not None  # split_checks
        queries, src = s.topics, read_run_source(s.run, s.qrels, limit=s.limit)
    return src, choose_held_out(src.qids, cfg.split), read_topics(queries)


def no_relevant(examples: list[ListwiseExample]) -> int | None:
    """Lists with no candidate graded > 0 (None when no list has grades): they teach only the order
    among non-relevant passages, and a share of them usually means the first stage missed."""
    graded = [e for e in examples if e.relevance is not None]
    return sum(1 for e in graded if not any(g > 0 for g in e.relevance)) if graded else None


def teacher_problems(cfg: JobCfg) -> list[str]:
    """Teacher settings that are valid YAML but cannot work, found before anything is imported or paid."""
    from lrt.config import resolve_path

    t, out = cfg.teacher, []
    if t.kind == "openai":
        from lrt.prep.openai_teacher import check_base_url
        try:
            check_base_url(t.base_url)
        except LrtError as e:
            out.append(str(e))
    if t.kind == "scores":
        p = Path(resolve_path(t.path))
        if not p.is_file():
            what = "is a directory" if p.is_dir() else "not found"
            out.append(f"teacher.path: {t.path}: {what}; give the {t.format} file whose scores rank the windows")
    return out


def check_job(cfg: JobCfg) -> None:
    problems = teacher_problems(cfg)
    if problems:
        raise LrtError("; ".join(problems) if len(problems) == 1
                       else f"{len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems))


def make_teacher(cfg: JobCfg) -> Teacher | None:
    """The configured teacher (None for `kind: none`); heavy imports only for the kind in use."""
    t, p = cfg.teacher, cfg.prompt
    template = p.template()
    if t.kind == "none":
        return None
    if t.kind == "scores":
        from lrt.prep.teachers import ScoresTeacher, load_scores
        return ScoresTeacher(load_scores(t.path, t.format), source=t.path, scheme=template.identifiers,
                             delay_s=t.delay_s, missing_score=0.0 if t.format == "qrels" else None)
    if t.kind == "openai":
        from lrt.prep.openai_teacher import OpenAITeacher
        truncate = None
        if p.tokenizer:
            from transformers import AutoTokenizer

            from lrt.data.prompts import truncate_tokens
            try:
                tok = AutoTokenizer.from_pretrained(p.tokenizer)
            except Exception as e:  # noqa: BLE001 - one clear line instead of a transformers traceback
                raise LrtError(f"prompt.tokenizer {p.tokenizer!r}: cannot load a tokenizer ({type(e).__name__}: "
                               f"{' '.join(str(e).split())[:300]}); give a directory with tokenizer.json") from None
            budget = p.max_passage_tokens or template.max_passage_tokens
            truncate = lambda text: truncate_tokens(tok, text, budget)  # noqa: E731
        return OpenAITeacher(base_url=t.base_url, model=t.model, template=template, api_key_env=t.api_key_env,
                             concurrency=t.concurrency, timeout_s=t.timeout_s, max_retries=t.max_retries,
                             backoff_s=t.backoff_s, backoff_max_s=t.backoff_max_s, max_tokens=t.max_tokens,
                             max_passage_words=None if p.tokenizer else p.max_passage_words, truncate=truncate)
    from lrt.prep.hf_teacher import HFTeacher
    return HFTeacher(model=t.model, template=template, tokenizer=t.tokenizer, batch_size=t.batch_size,
                     max_new_tokens=t.max_new_tokens, dtype=t.dtype, device=t.device,
                     max_passage_tokens=p.max_passage_tokens, trust_remote_code=t.trust_remote_code,
                     first_token_scores=cfg.labels.teacher_scores)


def check_invalid(counts: Counter, limit: float, name: str) -> None:
    """Fail the job when too many answered windows were refused or repaired: their "labels" would be
    (mostly) the first-stage order the repair appends, not the teacher's ranking."""
    answered = counts["calls"] - counts["failed_calls"]
    bad = counts["invalid_responses"]
    if answered and bad / answered > limit:
        raise LrtError(
            f"{name}: {bad} of {answered} answered teacher windows were invalid ({counts['refused']} refused: no "
            f"identifier at all; {counts['missing']} identifiers missing, {counts['duplicates']} duplicated, "
            f"{counts['out_of_range']} out of range), above labels.max_invalid_fraction={limit:g}; nothing was "
            "written. Check the teacher (model, prompt, max_tokens) or raise labels.max_invalid_fraction; valid "
            "answers stay cached, refusals are asked again")


def _cut(ex: ListwiseExample, n: int | None) -> ListwiseExample:
    """Keep the first `n` candidates (first-stage order); the ranking keeps its relative order."""
    if n is None or len(ex.candidates) <= n:
        return ex
    keep = {c.docid for c in ex.candidates[:n]}
    return replace(ex, candidates=ex.candidates[:n], ranking=[d for d in ex.ranking if d in keep],
                   relevance=ex.relevance[:n] if ex.relevance is not None else None,
                   teacher_scores=ex.teacher_scores[:n] if ex.teacher_scores is not None else None)


def attach_teacher_scores(examples: list[ListwiseExample], teacher: Any, window_scores: dict[str, list[float]],
                          counts: Counter) -> list[ListwiseExample]:
    """Store the teacher's per-candidate scores with each list (`labels.teacher_scores`).

    A scores teacher has one score per (qid, docid), comparable across the whole list. An LLM
    teacher's first-token log-probs are comparable only inside one prompt, so a list gets them only
    when it was ranked in one window (n <= labels.window); other lists keep `teacher_scores` null and
    are counted (`lists_without_teacher_scores`), never given scores from different windows.
    """
    inner = getattr(teacher, "inner", teacher)  # through the call cache
    out = []
    for e in examples:
        docids = [c.docid for c in e.candidates]
        sc = inner.list_scores(e.qid, docids) if hasattr(inner, "list_scores") else window_scores.get(e.qid)
        counts["lists_with_teacher_scores" if sc is not None else "lists_without_teacher_scores"] += 1
        out.append(replace(e, teacher_scores=sc) if sc is not None else e)
    return out


def run_shard(cfg: JobCfg, *, num_shards: int = 1, shard_id: int = 0, force: bool = False) -> dict:
    """Run one shard end to end and return its card (also written to `cards/`).

    The shard is locked for the whole run: a second process on the same shard is refused (naming
    the holder) instead of paying for the same windows and deleting the first one's temp files.
    """
    if not 0 <= shard_id < num_shards:
        raise LrtError(f"--shard-id {shard_id} must be in [0, {num_shards})")
    check_job(cfg)
    out, name = Path(cfg.output.dir), output.part_name(shard_id, num_shards)
    if out.exists() and not out.is_dir():
        raise LrtError(f"output.dir {str(out)!r} is a file; give a directory")
    with output.ShardLock(out, name):
        return _run_locked(cfg, out, name, num_shards, shard_id, force)


def _run_locked(cfg: JobCfg, out: Path, name: str, num_shards: int, shard_id: int, force: bool) -> dict:
    t0 = time.time()
    fp = fingerprint(cfg)
    card_path = out / "cards" / f"{name}.json"
    old = output.read_card(card_path)
    if old is not None and not force:  # a finished shard with failed queries is re-run to retry them
        if old.get("fingerprint") != fp:
            raise LrtError(f"{card_path}: this shard was finished by a different job config; use a new "
                           "output.dir, or --force to redo it (cached answers are reused where still valid)")
        if not old.get("failed_queries"):
            log.info("%s already finished (%s); nothing to do", name, card_path)
            if num_shards == 1 and not (out / "card.json").exists():
                output.merge(out)
            return old
    card_path.unlink(missing_ok=True)  # a forced redo must not look finished while it runs
    output.clean_stale_temps(out, name)
    teacher = make_teacher(cfg)  # first: a missing API key or model fails before a big corpus is read
    src, held, topics = split_source(cfg)
    imp = import_source(cfg, num_shards, shard_id, source=src, exclude=held)
    examples = [_cut(e, cfg.labels.max_candidates) for e in imp.examples]
    dups = sorted(q for q, n in Counter(e.qid for e in examples).items() if n > 1)
    if dups:
        raise DataError(f"source ({cfg.source.kind}): duplicate qid(s) {dups[:5]}; every query must appear "
                        "once (deduplicate the input)")
    log.info("%s: %d queries imported (%s)", name, len(examples), imp.report.summary())
    counts: Counter = Counter(imp.counts)
    unlabelled = no_relevant(examples)
    if unlabelled is not None:
        counts["lists_without_relevant"] = unlabelled
        if unlabelled:
            log.warning("%s: %d of %d lists have no relevant candidate (no grade > 0 in the first stage's top %s)",
                        name, unlabelled, len(examples), getattr(cfg.source, "depth", "lists"))
    failed: dict[str, str] = {}
    calls: list = []
    if teacher is not None:
        cache = None
        if cfg.cache.enabled:
            from lrt.prep.cache import CachedTeacher, CallCache
            cache = CallCache(cfg.cache.path or out / "cache" / f"{name}.sqlite", cfg.cache.journal)
            teacher = CachedTeacher(teacher, cache)
        lab = cfg.labels
        try:
            res = build_labels(examples, teacher, window=lab.window, stride=lab.stride, mode=lab.mode,
                               num_passes=lab.num_passes, record_calls=cfg.output.call_log)
        finally:
            if cache is not None:
                cache.close()
        counts.update(res.counts)
        counts.update({k: v for k, v in teacher.stats().items() if k != "cache_hits"})
        check_invalid(counts, lab.max_invalid_fraction, name)
        failed, calls = res.failed, res.calls
        examples = [replace(e, ranking=res.rankings[e.qid]) for e in examples if e.qid in res.rankings]
        if lab.teacher_scores:
            examples = attach_teacher_scores(examples, teacher, res.scores, counts)
        elif any(e.teacher_scores is not None for e in examples):  # a relabelled source's old scores
            counts["stale_teacher_scores_dropped"] += sum(e.teacher_scores is not None for e in examples)
            log.warning("%s: the source's teacher_scores belong to another teacher than this ranking: dropped "
                        "(set labels.teacher_scores=true to store this teacher's)", name)
            examples = [replace(e, teacher_scores=None) for e in examples]
    counts.update(input_rows=imp.report.total, skipped_rows=imp.report.skipped, rows_written=len(examples))
    split_card = None
    if src is not None and cfg.split is not None and shard_id == 0:  # after the labels: a failed job writes nothing
        from lrt.prep.split import write_held_out
        depth = getattr(cfg.source, "depth")
        split_card = {**write_held_out(out, src, held, topics, depth), "seed": cfg.split.seed}
    output.write_examples(out / "shards" / f"{name}.parquet", examples)
    if cfg.output.call_log:
        output.write_calls(out / "calls" / f"{name}.parquet", calls)
    sizes = [len(e.candidates) for e in examples]
    card = {
        "job": cfg.name, "description": cfg.description, "lrt_version": __version__, "fingerprint": fp,
        "shard": {"num_shards": num_shards, "shard_id": shard_id},
        "provenance": {
            "source": cfg.source.model_dump(), "teacher": teacher.describe() if teacher else {"kind": "none"},
            "prompt": {**cfg.prompt.template().to_dict(), "max_passage_words": cfg.prompt.max_passage_words},
            "labels": {**cfg.labels.model_dump(),
                       "passes_for_max_list": passes_needed(max(sizes, default=0), cfg.labels.window, cfg.labels.stride)},
        },
        "counts": dict(sorted(counts.items())),
        "skipped": {"reasons": dict(imp.report.reasons), "examples": imp.report.examples},
        "failed_queries": sorted(failed), "failed_examples": dict(list(failed.items())[:10]),
        "files": {"rows": f"shards/{name}.parquet", "calls": f"calls/{name}.parquet" if cfg.output.call_log else None},
        **({"split": split_card} if split_card is not None else {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.time() - t0, 2),
    }
    output.write_json(card_path, card)  # last: the shard is done
    if num_shards == 1:
        output.merge(out)
    return card


def summary(card: dict, shard_id: int, num_shards: int, out_dir: str) -> str:
    """The one-line result of a shard; the card (cards/*.json, card.json) holds every count."""
    c = card["counts"]
    line = (f"{card['job']} shard {shard_id}/{num_shards}: {c.get('rows_written', 0)} rows, "
            f"{c.get('calls', 0)} window calls ({c.get('cache_hits', 0)} cached), "
            f"{c.get('invalid_responses', 0)} repaired, {c.get('skipped_rows', 0)} skipped")
    if "lists_without_relevant" in c:
        line += f", {c['lists_without_relevant']} without a relevant candidate"
    if c.get("unjudged_queries_left_out"):
        line += f", {c['unjudged_queries_left_out']} unjudged queries left out"
    line += f" -> {out_dir}"
    sp = card.get("split")
    if sp:
        names = ", ".join(Path(f).name for k, f in sp["files"].items() if k not in ("train_qids", "qids"))
        line += (f"; split: {sp['train_queries']} train / {sp['held_out_queries']} held-out queries, held-out "
                 f"inputs in {Path(out_dir) / 'held_out'} ({names})")
    return line
