"""Recipes: YAML -> typed, strictly validated schema (pydantic v2) with dotted CLI overrides.

Unknown keys fail with their dotted path and a did-you-mean; wrong types and cross-field conflicts
fail too; every problem is collected and reported at once as one `ConfigError` (no traceback).
"""
from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Collection, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lrt import configio
from lrt.configio import PACKAGE_DIR, resolve_path  # noqa: F401  (re-exported: lrt.config.resolve_path)
from lrt.errors import ConfigError


class Strict(BaseModel):
    # use_attribute_docstrings: the docstring under each field is its description (docs/recipe-reference.md)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False,
                              use_attribute_docstrings=True)


class LoraConfig(Strict):
    r: int = Field(16, gt=0)
    """LoRA rank of each adapter matrix."""
    alpha: float = Field(32, gt=0)
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """dropout on the adapter inputs, active in training forwards only."""
    target_modules: str | list[str] = "all-linear"
    """modules that get adapters: peft's 'all-linear' or a list of module names."""
    modules_to_save: list[str] = []
    """modules trained in full and saved beside the adapter (e.g. lm_head, embed_tokens)."""


class QuantConfig(Strict):
    """bitsandbytes k-bit loading for QLoRA."""

    bits: Literal[4, 8] = 4
    """load the frozen base in 4 or 8 bits (bitsandbytes; CUDA)."""
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type: nf4 (QLoRA's) or fp4."""
    double_quant: bool = True
    """also quantise the quantisation constants (saves ~0.4 bit per parameter)."""
    compute_dtype: Literal["bfloat16", "float32", "float16"] = "bfloat16"
    """dtype the quantised matmuls compute in."""


class ModelConfig(Strict):
    name_or_path: str
    """Hub id, local directory or lrt:PATH of the model to fine-tune (or whose config to build with init=from_config)."""
    tokenizer: str | None = None
    """tokenizer to use instead of the model's own (Hub id or directory), e.g. a real tokenizer beside a config built with init=from_config."""
    init: Literal["pretrained", "from_config"] = "pretrained"
    """pretrained: load the weights; from_config: random weights from the config (CPU experiments with a real tokenizer, no download)."""
    config_overrides: dict[str, Any] = {}
    """config fields changed before the model is built or loaded, e.g. {num_hidden_layers: 2, hidden_size: 128} (unknown keys and wrong types are errors)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype the weights are loaded in."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """attention kernel; flash_attention_2 falls back to sdpa with a warning when not installed."""
    trust_remote_code: bool = False
    """run the model repository's own Python code (off: nothing from a model directory is executed)."""
    gradient_checkpointing: bool = False
    """recompute activations in backward (non-reentrant): far less activation memory, ~30% more compute."""
    neftune_alpha: float | None = Field(None, ge=0)
    """NEFTune noise scale on input embeddings in training forwards (5 in FIRST); null: off."""
    lora: LoraConfig | None = None
    """train LoRA adapters instead of the full model (null: full fine-tuning)."""
    quantization: QuantConfig | None = None
    """QLoRA: load the frozen base quantised (needs lora)."""


class DataConfig(Strict):
    train: str
    """training lists: a canonical JSONL/Parquet file or a datasets name (see the README's canonical example)."""
    eval: str | None = None
    """held-out lists for in-training evaluation (same format; eval.data overrides it)."""
    split: str = "train"
    """split to read when data.train names a datasets dataset."""
    on_invalid: Literal["error", "skip"] = "error"
    """a bad row: error (stop with file:line) or skip (count and report it)."""
    window: int | None = Field(None, gt=1, description="candidates per training list (first ones in display order)")
    max_length: int = Field(4096, gt=16)
    """token budget of one training sequence; passages are cut to fit, the answer never."""
    padding_side: Literal["left", "right"] = "right"
    """pad micro-batches on the left or the right (scores are equal either way; tested)."""
    limit: int | None = Field(None, gt=0)
    """read only the first N lists (quick runs)."""
    num_proc: int = Field(1, ge=1)
    """processes that tokenise the data when the cache is built."""
    # tokenised cache (lrt.data.cache): built once, memory-mapped by every rank
    cache: bool = True
    """tokenise once into memory-mapped Arrow stores shared by every rank (false: encode in memory at every start)."""
    cache_dir: str | None = Field(None, description="default <output_dir>/data-cache; share it between runs")
    group_by_length: bool | None = Field(None, description="default: on when the global batch (per_device_batch_size x grad_accum x processes) > 1")
    num_workers: int = Field(0, ge=0, description="DataLoader processes collating batches ahead of the step")


class PromptConfig(Strict):
    preset: Literal["first_alpha", "rank_llm", "rank_llm_numeric", "rankgpt_numeric", "compact",
                    "qwen3_reranker", "compact_pointwise"] = "first_alpha"  # *_pointwise, qwen3_reranker: scoring.mode=pointwise
    """prompt template: first_alpha, rank_llm (rank_llm's FIRST prompt byte for byte), rank_llm_numeric, rankgpt_numeric, compact; pointwise: qwen3_reranker, compact_pointwise."""
    system: str | None = None
    """system message replacing the preset's."""
    prefix: str | None = None
    """text before the passages replacing the preset's ({query} and {num} are filled in)."""
    suffix: str | None = None
    """text after the passages replacing the preset's."""
    passage: str | None = None
    """how one passage is written, e.g. '[{id}] {text}\n'."""
    identifiers: Literal["alpha", "numeric", "special"] | None = None
    """candidate identifiers: alpha (A-Z), numeric (1, 2, ...) or special (<id_1>..<id_N>, added tokens); null: the preset's."""
    max_passage_tokens: int = Field(300, gt=0)
    """each passage is cut to this many tokens (training, teachers and reranking alike)."""
    chat_template: Literal["auto", "none"] = "auto"
    """auto: wrap the prompt in the tokenizer's chat template when it has one; none: plain text."""
    system_in_user: bool = False
    """fold the system text into the user turn (chat templates without a system role)."""
    bos: Literal["auto", "always", "never"] = "auto"  # auto: BOS iff the tokenizer adds one and the template has none
    """auto: BOS iff the tokenizer adds one to text and the chat template writes none (as vLLM does); always; never."""


class ScoringConfig(Strict):
    """How a list is scored: `first_token` (one listwise prompt, identifier logits) or `pointwise`
    (one sequence per candidate, logit(yes) - logit(no); lrt.data.pointwise)."""

    mode: Literal["first_token", "pointwise"] = "first_token"
    """first_token: one listwise prompt per list, identifier logits at the answer position; pointwise: one sequence per candidate, logit(yes) - logit(no)."""
    negatives: int | None = Field(None, ge=1, description="pointwise: train on the teacher's top-1 + this many others "
                                                          "per list, drawn per step (None: every candidate)")
    pair_batch: int | None = Field(None, gt=0, description="pointwise: pairs per forward (activation-checkpointed "
                                                           "chunks of a micro-batch's groups); None: all at once")
    instruction: str | None = None  # pointwise: the template's {instruction} (preset default otherwise)
    """pointwise: the template's {instruction} (null: the preset's)."""


class LossTerm(Strict):
    """One weighted term of the objective: `lm` or any registered ranking loss."""

    name: str
    """lm or a registered ranking loss (ranknet, lambdaloss, listnet, listmle, approxndcg, softmax_ce, lipo_lambda, bce, ...)."""
    weight: float = Field(1.0, gt=0, le=1e6)
    """the term's weight in the objective's sum."""
    params: dict[str, Any] = {}
    """the loss's own parameters (checked at load; see docs/recipes.md#losses)."""


LM_PARAMS = {"importance", "alpha", "normalize", "chunk_size", "kernel"}


class TrainConfig(Strict):
    seed: int = Field(42, ge=0, lt=2**32, description="random, numpy and torch seed (numpy needs < 2**32)")
    epochs: float = Field(1.0, gt=0, le=1e6)
    """passes over the training lists (ignored when max_steps is set)."""
    max_steps: int | None = Field(None, gt=0)
    """optimizer steps to run (overrides epochs)."""
    per_device_batch_size: int = Field(1, gt=0)
    """lists per micro-batch on each process."""
    grad_accum: int = Field(1, gt=0)
    """micro-batches accumulated per optimizer step; global batch = per_device_batch_size x grad_accum x processes."""
    lr: float = Field(5e-6, gt=0, le=1.0)
    """peak learning rate of AdamW."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW decoupled weight decay."""
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    """AdamW (beta1, beta2)."""
    eps: float = Field(1e-8, gt=0, le=1.0)
    """AdamW epsilon."""
    warmup_steps: int = Field(0, ge=0)
    """linear warm-up steps from 0 to lr."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """learning-rate schedule after warm-up."""
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    """the schedule's final learning rate as a fraction of lr."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """clip the global gradient norm to this (null: no clipping)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """fp32, or bf16 autocast (scores and losses stay fp32)."""
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    """adamw (torch), or adamw8bit (bitsandbytes, not under DeepSpeed)."""
    save_every: int | None = Field(None, gt=0)
    """write a checkpoint every N optimizer steps (null: only at preemption)."""
    keep_last: int = Field(2, gt=0)
    """checkpoints kept (the best one under eval.select_best is kept too)."""
    resume: str = "none"  # none | auto | path to a checkpoint directory
    """none (fresh run), auto (the newest checkpoint that verifies), or a checkpoint directory."""
    overwrite_output_dir: bool = False  # a fresh run may replace a previous run's checkpoints/metrics in output_dir
    """a fresh run may replace an earlier run's checkpoints and metrics in output_dir."""
    allow_data_change: bool = False
    """resume even though data.train's contents changed since the checkpoint (refused otherwise)."""
    on_nonfinite: Literal["stop", "skip"] = "stop"  # non-finite loss/grad norm: stop, or skip that update
    """a NaN/Inf loss or gradient norm: stop (name the step and the last good checkpoint) or skip that update."""
    deepspeed: str | None = None
    """DeepSpeed JSON (lrt:resources/launch/ds_zero2.json, ds_zero3.json, ds_zero3_offload.json); batch, clipping and precision are filled from the recipe."""
    log_every: int = Field(10, gt=0)
    """steps per metrics.jsonl training record (interval means)."""
    save_final: bool = True
    """export the model to output_dir/final at the end."""


class EvalConfig(Strict):
    data: str | None = None  # defaults to data.eval
    """held-out lists (default: data.eval)."""
    qrels: str | None = None  # TREC qrels file: trec_eval-exact eval/nDCG@10 (else the rows' own `qrels`)
    """TREC qrels file: trec_eval-exact eval/nDCG@10 (else the rows' own qrels, or candidate grades)."""
    every: int | None = Field(None, gt=0)
    """evaluate every N optimizer steps (null: only at start/end)."""
    at_start: bool = True
    """evaluate before the first step (the backbone's figure)."""
    at_end: bool = True
    """evaluate after the last step."""
    window: int | None = Field(None, gt=1)
    """candidates per reranking window during evaluation (null: the training window, else every candidate)."""
    stride: int | None = Field(None, gt=0)
    """window stride during evaluation (null: half the window)."""
    batch_size: int = Field(8, gt=0)
    """windows per forward during evaluation."""
    max_queries: int | None = Field(None, gt=0)
    """evaluate on the first N held-out queries only."""
    select_best: bool = False
    """final/ is the export of the best evaluated checkpoint, not the last step (needs every and save_every)."""


class LogConfig(Strict):
    report_to: list[Literal["wandb", "tensorboard", "trackio", "mlflow"]] = Field(default_factory=list)
    """trackers besides metrics.jsonl (env LRT_REPORT_TO, a comma list or 'none', wins over this list)."""
    wandb: Literal["disabled", "offline", "online"] = "disabled"
    """wandb's mode (env WANDB_MODE wins); anything but disabled adds wandb to report_to."""
    project: str = "lrt"
    """project name for the trackers."""
    run_name: str | None = None
    """run name for the trackers (null: output_dir's name)."""
    progress: bool = True
    """show progress bars / periodic progress lines."""


def _default_loss() -> list[LossTerm]:
    return [LossTerm(name="lm", weight=1.0), LossTerm(name="ranknet", weight=10.0, params={"weighting": "first"})]


class Recipe(Strict):
    model: ModelConfig
    """the model to fine-tune and how it is loaded."""
    data: DataConfig
    """training and evaluation data, the token budget, the tokenised cache."""
    prompt: PromptConfig = PromptConfig()
    """the prompt template the model is trained, evaluated and exported with."""
    scoring: ScoringConfig = ScoringConfig()
    """how a list is scored (listwise first-token or pointwise pairs)."""
    loss: list[LossTerm] = Field(default_factory=_default_loss)
    """the objective: a list of weighted terms."""
    train: TrainConfig = TrainConfig()
    """optimisation, schedule, checkpoints, resume, DeepSpeed."""
    eval: EvalConfig = EvalConfig()
    """in-training evaluation."""
    log: LogConfig = LogConfig()
    """trackers and console."""
    output_dir: str = Field(min_length=1)
    """where checkpoints, metrics, plots and final/ go."""

    @model_validator(mode="after")
    def _cross_field(self) -> "Recipe":
        problems = cross_field_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    # derived views -------------------------------------------------------------------------
    def identifier_scheme(self) -> str:
        from lrt.data.prompts import PRESETS

        # pointwise presets have no identifiers: "numeric" puts no limit on the list length
        return self.prompt.identifiers or PRESETS.get(self.prompt.preset, {}).get("identifiers", "numeric")

    def ranking_terms(self) -> list[LossTerm]:
        return [t for t in self.loss if t.name != "lm"]

    def lm_term(self) -> LossTerm | None:
        return next((t for t in self.loss if t.name == "lm"), None)


def cross_field_problems(r: Recipe) -> list[str]:
    """Conflicts no single field can see; each message names the keys and the fix."""
    out: list[str] = []
    scheme = r.identifier_scheme()
    if scheme == "alpha" and r.data.window and r.data.window > 26:
        out.append(f"data.window={r.data.window} but alpha identifiers stop at 26: set prompt.identifiers=special")
    if r.model.quantization and not r.model.lora:
        out.append("model.quantization needs model.lora (QLoRA trains adapters on a frozen quantised base)")
    if r.model.lora and r.model.init == "from_config":
        out.append("model.lora with model.init=from_config would train adapters on a random frozen base: use init=pretrained")
    if r.model.quantization and r.train.deepspeed:
        out.append("model.quantization with train.deepspeed is not supported: use one GPU with QLoRA, or LoRA under ZeRO")
    out.extend(_mode_problems(r))
    if not r.loss:
        out.append("loss: needs at least one term, e.g. [{name: lm}]")
    names = [t.name for t in r.loss]
    if len(set(names)) != len(names):
        out.append(f"loss: each term may appear once (got {names})")
    out.extend(_loss_problems(r.loss))
    if r.eval.select_best and not r.eval.every:
        out.append("eval.select_best needs eval.every (steps between evaluations)")
    if (r.eval.every or r.eval.select_best) and not (r.eval.data or r.data.eval):
        out.append("eval.every is set but there is no eval data: set data.eval or eval.data")
    if r.train.precision == "bf16" and r.model.dtype == "float16":
        out.append("train.precision=bf16 conflicts with model.dtype=float16")
    if r.train.resume not in ("none", "auto") and not Path(r.train.resume).exists():
        out.append(f"train.resume: checkpoint {r.train.resume!r} does not exist (use auto, none or a checkpoint dir)")
    if r.train.deepspeed and not Path(resolve_path(r.train.deepspeed)).exists():
        out.append(f"train.deepspeed: file {r.train.deepspeed!r} not found (shipped: lrt:resources/launch/ds_zero2.json, "
                   "ds_zero3.json, ds_zero3_offload.json)")
    if r.output_dir and Path(r.output_dir).exists() and not Path(r.output_dir).is_dir():
        out.append(f"output_dir: {r.output_dir!r} is a file, not a directory; choose a directory path")
    if r.train.optimizer == "adamw8bit" and r.train.deepspeed:
        out.append("train.optimizer=adamw8bit is not used under DeepSpeed (it builds its own optimizer)")
    return out


@dataclass(frozen=True)
class ModeRules:
    """What one `scoring.mode` accepts beyond the common schema, as data: the recipe is validated
    against it at load (every command), and lrt.families holds the rest of the family (data, training
    module, ranker, export). `presets` None: every preset no other mode claims."""

    noun: str  # how messages name the mode's templates ("a pointwise template")
    presets: Callable[[], Collection[str]] | None = None  # read lazily from the data registries
    refused_terms: tuple[str, ...] = ()
    refused_terms_why: str = ""
    refused_prompt: tuple[tuple[str, str], ...] = ()  # (prompt field, why) of fields the mode has no use for
    literal_prompt: tuple[str, ...] = ()  # prompt fields that are literal text in this mode (no {fields})


def _pair_presets() -> Collection[str]:
    from lrt.data.pointwise import POINTWISE_PRESETS

    return POINTWISE_PRESETS


# keys: the values of ScoringConfig.mode (one per lrt.families entry)
SCORING_MODES: dict[str, ModeRules] = {
    "first_token": ModeRules(noun="listwise"),
    "pointwise": ModeRules(
        noun="pointwise", presets=_pair_presets, refused_terms=("lm", "lipo_lambda", "lipo_k"),
        refused_terms_why="scores pairs, it has no listwise target",
        refused_prompt=(("system", "a pointwise pair template has no separate system message: write it into "
                                   "prompt.prefix (the text before the pair body), or use scoring.instruction"),
                        ("passage", "a pointwise pair holds one passage in the preset's body, there are no passage "
                                    "lines to format: remove it (prompt.prefix, prompt.suffix and scoring.instruction "
                                    "are used)")),
        literal_prompt=("prefix", "suffix"),
    ),
}


def _mode_problems(r: Recipe) -> list[str]:
    """The scoring mode's own rules (SCORING_MODES): its presets, loss terms and prompt fields."""
    mode, rules = r.scoring.mode, SCORING_MODES[r.scoring.mode]
    if rules.presets is None:
        owner = next((m for m, x in SCORING_MODES.items() if x.presets is not None and r.prompt.preset in x.presets()),
                     None)
        if owner is not None:
            return [f"prompt.preset={r.prompt.preset} is a {SCORING_MODES[owner].noun} template: set scoring.mode={owner}"]
        return []
    out = []
    presets = rules.presets()
    if r.prompt.preset not in presets:
        out.append(f"scoring.mode={mode} needs a {rules.noun} prompt.preset ({', '.join(sorted(presets))})")
    bad = [t.name for t in r.loss if t.name in rules.refused_terms]
    if bad:
        out.append(f"scoring.mode={mode} {rules.refused_terms_why}: remove loss terms {bad} "
                   "(use softmax_ce, bce, ranknet, ...)")
    out.extend(f"prompt.{key}: {why}" for key, why in rules.refused_prompt if getattr(r.prompt, key) is not None)
    import string

    for key in rules.literal_prompt:
        text = getattr(r.prompt, key)
        try:
            names = [n for _, n, _, _ in string.Formatter().parse(text or "") if n in ("query", "doc", "instruction", "num")]
        except ValueError:
            names = []
        if names:
            out.append(f"prompt.{key}: a {rules.noun} {key} is literal text, {{{names[0]}}} would not be filled in: the "
                       "query and passage go into the preset's body (set scoring.instruction for {instruction})")
    return out


def _loss_problems(terms: list[LossTerm]) -> list[str]:
    try:
        from lrt.losses.registry import param_problems
    except ImportError:  # loss library not importable: report rather than crash
        return ["loss: the loss registry (lrt.losses) cannot be imported"]
    # every bad param of every term (lm included), each under its dotted key
    return [f"loss[{i}].{'params.' + k if k else 'name'}: {msg}"
            for i, t in enumerate(terms) for k, msg in param_problems(t.name, dict(t.params)).items()]


# ---------------------------------------------------------------------------------------------
# loading (the machinery is shared with prep jobs: lrt/configio.py)

# path-valued keys: "path" is always local; "maybe_hub" may be a Hugging Face hub id. Relative values
# resolve against the recipe file's directory (overrides: the current directory). Add new path keys here.
PATH_FIELDS: dict[str, str] = {
    "model.name_or_path": "maybe_hub", "model.tokenizer": "maybe_hub",
    "data.train": "maybe_hub", "data.eval": "maybe_hub", "eval.data": "maybe_hub", "eval.qrels": "path",
    "train.deepspeed": "path", "train.resume": "resume", "output_dir": "path", "data.cache_dir": "path",
}


def apply_overrides(raw: dict[str, Any], overrides: list[str], base: Path | None = None) -> dict[str, Any]:
    """`train.lr=1e-5`, `loss[1].weight=5`, `model.lora=null`: values are parsed as YAML scalars;
    path values are relative to the current directory (or `base`)."""
    problems = configio.apply_overrides(raw, overrides, "train.lr=1e-5", base, PATH_FIELDS)
    if problems:
        raise ConfigError(problems, "overrides")
    return raw


def load_recipe(path: str | Path, overrides: list[str] | None = None, check_files: bool = True) -> Recipe:
    """Read, override, validate. Raises ConfigError listing every problem.

    Relative paths in the file resolve against the file's directory; in `overrides`, against the
    current directory."""
    raw = configio.read_mapping(path, "recipe", "model, data, prompt, loss, train, eval, log, output_dir")
    configio.anchor_fields(raw, PATH_FIELDS, Path(os.path.dirname(os.path.abspath(str(path)))))
    return recipe_from_dict(raw, overrides or [], str(path), check_files)


def recipe_from_dict(raw: dict[str, Any], overrides: list[str], source: str = "recipe", check_files: bool = True,
                     base: Path | None = None) -> Recipe:
    """Validate a recipe given as a dict; its relative paths resolve against `base` (default: cwd)."""
    raw = copy.deepcopy(raw)
    if any(o.startswith(("loss[", "loss.")) for o in overrides) and "loss" not in raw:
        raw["loss"] = [t.model_dump() for t in _default_loss()]  # so `loss[1].weight=5` edits the default
    configio.anchor_fields(raw, PATH_FIELDS, base or Path.cwd())
    problems = configio.apply_overrides(raw, overrides, "train.lr=1e-5", None, PATH_FIELDS)
    recipe = configio.validate(Recipe, raw, source, problems)
    if check_files:
        problems = missing_files(recipe)
        if problems:
            raise ConfigError(problems, source)
    return recipe


def missing_files(r: Recipe) -> list[str]:
    """Local data paths that do not exist (hub ids without a file suffix are left to `datasets`)."""
    out = []
    if r.eval.qrels and not Path(resolve_path(r.eval.qrels)).is_file():
        out.append(f"eval.qrels: file {r.eval.qrels!r} not found")
    for key, val in (("data.train", r.data.train), ("data.eval", r.data.eval), ("eval.data", r.eval.data)):
        if val:
            p = Path(resolve_path(val))
            looks_local = p.suffix in {".jsonl", ".json", ".parquet"} or val.startswith((".", "/", "lrt:"))
            if looks_local and not p.exists():
                out.append(f"{key}: file {val!r} not found")
    return out


def dump_recipe(r: Recipe, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(r.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
