"""Data-prep jobs as YAML: strict pydantic models, dotted overrides, every problem at once.

Strict (`extra="forbid"`, no type coercion) because a typo in a job that spends API money should
fail before the first call, not after the last one: unknown keys get a did-you-mean, and all
problems (YAML, overrides, types, cross-field rules) are reported together in one `ConfigError`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

import lrt.configio as configio
from lrt.data.prompts import ALPHA_MAX, PRESETS, PromptTemplate
from lrt.errors import ConfigError

PosInt = Annotated[int, Field(ge=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Rows(_Strict):
    limit: Optional[PosInt] = None  # first N rows of the input, before sharding
    on_invalid: Literal["error", "skip"] = "error"


class ConversationsSource(_Rows):
    kind: Literal["conversations"]
    path: str  # a local JSONL/JSON file, else a `datasets` hub name or folder (castorini/rank_zephyr_training_data)
    split: str = "train"  # for a `datasets` source


class FullrankSource(_Rows):
    kind: Literal["fullrank"]
    path: str
    corpus: Optional[str] = None
    queries: Optional[str] = None
    synthetic_text: bool = False  # demo: invent deterministic texts where no corpus/queries file is given


class TrecSource(_Rows):
    kind: Literal["trec"]
    run: str
    topics: Optional[str] = None
    corpus: Optional[str] = None
    qrels: Optional[str] = None  # labels without a teacher: grade, ties by first-stage order
    depth: PosInt = 100
    synthetic_text: bool = False


class BeirSource(_Rows):
    """A BEIR folder (queries.jsonl, corpus.jsonl, qrels/NAME.tsv) plus the first-stage run to rerank.

    BEIR ships no run: `run` is required, because the lists a reranker trains on must be the ones it
    will rerank (your retriever's top-`depth`), not the judged documents alone. Queries of the run
    without judgements in the qrels (e.g. the other BEIR split's) are left out and counted
    (`unjudged_queries_left_out`).
    """
    kind: Literal["beir"]
    path: str  # the folder
    run: Optional[str] = None  # TREC run of the first stage (e.g. BM25 top-100) over these queries
    qrels: Optional[str] = None  # the qrels file that labels the lists (default: the folder's qrels/test.tsv)
    depth: PosInt = 100


class CanonicalSource(_Rows):
    kind: Literal["canonical"]
    path: str


class NoTeacherCfg(_Strict):
    kind: Literal["none"] = "none"  # keep the imported ranking


class ScoresTeacherCfg(_Strict):
    kind: Literal["scores"]
    path: str
    format: Literal["run", "qrels", "fullrank"]
    delay_s: Annotated[float, Field(ge=0)] = 0.0


class OpenAITeacherCfg(_Strict):
    kind: Literal["openai"]
    base_url: str
    model: str
    api_key_env: Optional[str] = "OPENAI_API_KEY"  # the *name* of the variable; the key never touches disk
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 8
    timeout_s: Annotated[float, Field(gt=0)] = 120.0
    max_retries: Annotated[int, Field(ge=0, le=30)] = 6
    backoff_s: Annotated[float, Field(ge=0)] = 1.0
    backoff_max_s: Annotated[float, Field(ge=0)] = 60.0
    max_tokens: Optional[PosInt] = None


class HFTeacherCfg(_Strict):
    kind: Literal["hf"]
    model: str
    tokenizer: Optional[str] = None
    batch_size: PosInt = 8
    max_new_tokens: Optional[PosInt] = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "cpu"
    trust_remote_code: bool = False


class LabelsCfg(_Strict):
    window: Annotated[int, Field(ge=2)] = 20
    stride: PosInt = 10
    mode: Literal["single_pass", "freeze_prefix", "full_repass"] = "freeze_prefix"
    num_passes: Optional[PosInt] = None  # default: enough passes to complete the list
    max_candidates: Optional[PosInt] = None  # keep only the first N candidates (first-stage order)
    # the job fails (exit 2, counts in the message) when more than this fraction of the answered windows
    # were refused (no identifier at all) or needed repair: such labels would be the first-stage order
    max_invalid_fraction: Annotated[float, Field(ge=0, le=1)] = 0.05
    # store the teacher's score of each candidate with its list (`teacher_scores`, for margin_mse /
    # kl_distill): a scores teacher's scores; a hf teacher's first-token identifier log-probs
    teacher_scores: bool = False


class PromptCfg(_Strict):
    preset: str = "rankgpt_numeric"
    identifiers: Optional[Literal["alpha", "numeric", "special"]] = None
    system: Optional[str] = None
    prefix: Optional[str] = None
    suffix: Optional[str] = None
    max_passage_words: Optional[PosInt] = 300  # openai teacher (RankGPT truncates by words)
    max_passage_tokens: Optional[PosInt] = None  # hf teacher, or openai with `tokenizer`
    tokenizer: Optional[str] = None  # openai: truncate passages by this tokenizer's tokens
    chat_template: Literal["auto", "none"] = "auto"
    system_in_user: bool = False

    def template(self) -> PromptTemplate:
        return PromptTemplate.preset(self.preset, identifiers=self.identifiers, system=self.system, prefix=self.prefix,
                                     suffix=self.suffix, max_passage_tokens=self.max_passage_tokens,
                                     chat_template=self.chat_template, system_in_user=self.system_in_user or None)


class SplitCfg(_Strict):
    """Hold queries out of training: their first-stage run, queries and qrels are written for
    `lrt rerank` / `lrt eval` (`output.dir/held_out/`), and only the rest become training lists."""
    held_out: Optional[Union[int, float]] = None  # a number of queries (20), or a fraction in (0, 1) (0.2)
    held_out_qids: Optional[str] = None  # or: a file with one held-out qid per line
    seed: int = 0  # the shuffle of the (sorted) qids that picks `held_out` queries


class OutputCfg(_Strict):
    dir: str
    call_log: bool = True


class CacheCfg(_Strict):
    enabled: bool = True
    path: Optional[str] = None  # default: <output.dir>/cache/part-I-of-K.sqlite (one file per shard)
    journal: Literal["wal", "delete"] = "wal"


SourceCfg = Annotated[Union[ConversationsSource, FullrankSource, TrecSource, BeirSource, CanonicalSource],
                      Field(discriminator="kind")]
TeacherCfg = Annotated[Union[NoTeacherCfg, ScoresTeacherCfg, OpenAITeacherCfg, HFTeacherCfg],
                       Field(discriminator="kind")]
_TAGGED = {"source": {m.model_fields["kind"].annotation.__args__[0]: m for m in
                      (ConversationsSource, FullrankSource, TrecSource, BeirSource, CanonicalSource)},
           "teacher": {m.model_fields["kind"].annotation.__args__[0]: m for m in
                       (NoTeacherCfg, ScoresTeacherCfg, OpenAITeacherCfg, HFTeacherCfg)}}
# knobs that change speed, not answers: excluded from the job fingerprint so a resumed job may tune them
OPERATIONAL = {"concurrency", "timeout_s", "max_retries", "backoff_s", "backoff_max_s", "batch_size", "device",
               "delay_s", "on_invalid", "max_invalid_fraction"}


class JobCfg(_Strict):
    name: str
    description: Optional[str] = None
    source: SourceCfg
    teacher: TeacherCfg = NoTeacherCfg()
    labels: LabelsCfg = LabelsCfg()
    prompt: PromptCfg = PromptCfg()
    split: Optional[SplitCfg] = None
    output: OutputCfg
    cache: CacheCfg = CacheCfg()


def _did_you_mean(word: str, options: list[str]) -> str:
    return configio.did_you_mean(word, options)


TAGS = {k: list(v) for k, v in _TAGGED.items()}


def cross_checks(cfg: JobCfg) -> list[str]:
    """Rules that span sections (each reported with the dotted key to change)."""
    out = []
    lab, t = cfg.labels, cfg.teacher
    if lab.stride >= lab.window:
        out.append(f"labels.stride: must be smaller than labels.window ({lab.stride} >= {lab.window}); windows must "
                   "overlap or a good passage cannot travel to the top")
    if lab.mode == "single_pass" and lab.num_passes not in (None, 1):
        out.append("labels.num_passes: single_pass means 1 pass; use freeze_prefix or full_repass for more")
    if cfg.prompt.preset not in PRESETS:
        out.append(f"prompt.preset: unknown preset {cfg.prompt.preset!r}{_did_you_mean(cfg.prompt.preset, list(PRESETS))}")
    elif cfg.prompt.template().identifiers == "alpha" and lab.window > ALPHA_MAX:
        out.append(f"labels.window: {lab.window} > {ALPHA_MAX} alphabetic identifiers; set prompt.identifiers=numeric")
    if isinstance(cfg.source, TrecSource) and cfg.source.qrels is None and t.kind == "none":
        out.append("teacher.kind: a TREC run without source.qrels has no labels; add qrels or a teacher")
    if isinstance(cfg.source, BeirSource) and cfg.source.run is None:
        out.append("source.run: a BEIR folder has no first-stage run; give the TREC run of the retriever whose "
                   "lists the model will rerank (e.g. BM25 top-100: `qid Q0 docid rank score tag` lines)")
    out.extend(split_checks(cfg))
    if lab.teacher_scores and t.kind in ("none", "openai"):
        what = "teacher.kind=none computes no scores (a canonical source's teacher_scores are kept as they are)" \
            if t.kind == "none" else (
            "the openai teacher's first-token log-probs are not collected yet (only its text answer)")
        out.append(f"labels.teacher_scores: {what}; use teacher.kind=scores (a run/qrels file) or hf, or set "
                   "labels.teacher_scores=false")
    if isinstance(t, OpenAITeacherCfg) and cfg.prompt.max_passage_tokens and not cfg.prompt.tokenizer:
        out.append("prompt.tokenizer: needed to truncate by prompt.max_passage_tokens with the openai teacher "
                   "(or use prompt.max_passage_words)")
    return out


def split_checks(cfg: JobCfg) -> list[str]:
    sp, src = cfg.split, cfg.source
    if sp is None:
        return []
    out = []
    if (sp.held_out is None) == (sp.held_out_qids is None):
        out.append("split: give exactly one of split.held_out (a count such as 20, or a fraction such as 0.2) and "
                   "split.held_out_qids (a file of qids)")
    elif isinstance(sp.held_out, float) and not 0 < sp.held_out < 1:
        out.append(f"split.held_out: a fraction must be in (0, 1), got {sp.held_out}; give a count as an integer")
    elif isinstance(sp.held_out, int) and sp.held_out < 1:
        out.append(f"split.held_out: a count must be >= 1, got {sp.held_out}")
    if not isinstance(src, (TrecSource, BeirSource)):
        out.append(f"split: needs a first-stage run to write the held-out inputs (source.kind trec or beir), not "
                   f"{src.kind}; split that data before prep")
    elif isinstance(src, TrecSource) and (src.topics is None or src.synthetic_text):
        out.append("split: needs real query texts for the held-out queries file; set source.topics")
    return out


# path-valued keys (see lrt/configio.py): relative values in the job file resolve against the job file's
# directory, in overrides against the current directory; `lrt:` names a file shipped in the package.
PATH_FIELDS: dict[str, str] = {
    "source.path": "maybe_hub", "source.corpus": "path", "source.queries": "path", "source.run": "path",
    "source.topics": "path", "source.qrels": "path", "teacher.path": "path", "teacher.model": "maybe_hub",
    "teacher.tokenizer": "maybe_hub", "prompt.tokenizer": "maybe_hub", "output.dir": "path", "cache.path": "path",
    "split.held_out_qids": "path",
}


BEIR_KINDS = {"corpus": "corpus", "topics": "queries", "queries": "queries", "qrels": "qrels"}


def _unpack_lrt(raw: dict, problems: list[str]) -> None:
    """`lrt:resources/...` -> the file inside the installed package (importers take plain paths); a BEIR
    folder given as source.corpus/topics/queries/qrels -> its corpus.jsonl / queries.jsonl / qrels/test.tsv."""
    from lrt.errors import DataError
    from lrt.io.trec import beir_file

    for dotted in PATH_FIELDS:
        sec, _, key = dotted.partition(".")
        node = raw.get(sec)
        if isinstance(node, dict) and isinstance(node.get(key), str):
            node[key] = configio.resolve_path(node[key])
            if sec == "source" and key in BEIR_KINDS and Path(node[key]).is_dir():
                try:
                    node[key] = str(beir_file(node[key], BEIR_KINDS[key]))
                except DataError as e:
                    problems.append(f"{dotted}: {e}")


def load_job(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobCfg:
    """Read, override and validate a job; raise one `ConfigError` listing every problem."""
    data = configio.read_mapping(path, "job", "name, source, teacher, labels, prompt, output")
    configio.anchor_fields(data, PATH_FIELDS, Path(os.path.dirname(os.path.abspath(str(path)))))
    problems = configio.apply_overrides(data, overrides, "teacher.model=gpt-4o", None, PATH_FIELDS)
    _unpack_lrt(data, problems)
    cfg = configio.validate(JobCfg, data, str(path), problems, TAGS)
    problems = cross_checks(cfg)
    if problems:
        raise ConfigError(problems, source=str(path))
    return cfg
