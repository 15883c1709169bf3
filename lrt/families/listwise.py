"""The listwise family (`scoring.mode: first_token`): one prompt holds the query and the whole list
(or a window of it) with an identifier per candidate.

One family, three rerank modes, because they share the prompt, the encoding, the training module and
the export: `first_token` (FIRST: the logits of the first identifier token after `[` score every
candidate in one forward), `full` (fullrank's full-list `<id_k>` scoring of the same prompt) and
`generate` (decode the permutation). What the objective trained (ranking terms, the LM loss, or only
the LM loss on `<id_k>` permutations) picks which mode the card recommends (`card_mode`); it is not a
different way of turning rows into model inputs, so it is not a separate family.
"""
from __future__ import annotations

from typing import Any, Sequence

from lrt.config import Recipe


def prompt_template(r: Recipe) -> Any:
    """The recipe's listwise PromptTemplate (preset + the recipe's own prompt parts)."""
    from lrt.data.prompts import PromptTemplate

    p = r.prompt
    return PromptTemplate.preset(
        p.preset, system=p.system, prefix=p.prefix, suffix=p.suffix, passage=p.passage,
        identifiers=p.identifiers, max_passage_tokens=p.max_passage_tokens, chat_template=p.chat_template,
        system_in_user=p.system_in_user, bos=p.bos,
    )


def export_window(r: Recipe) -> tuple[int, int]:
    """(window, stride) an export records: the one eval-window default (lrt.ranking.default_window)."""
    from lrt.ranking import default_window

    return default_window(r.eval.window, r.eval.stride, r.data.window)


class ListwiseFamily:
    name = "first_token"
    pairs = False
    rerank_modes: tuple[str, ...] = ("first_token", "full", "generate")
    default_rerank_mode = "first_token"
    card_kind = "listwise"

    def check(self, r: Recipe) -> list[str]:
        return []  # the declarative rules (lrt.config.SCORING_MODES) cover it

    def validate_text(self, r: Recipe) -> str:
        return f"identifiers {r.identifier_scheme()}"

    def template(self, r: Recipe) -> Any:
        return prompt_template(r)

    def collator(self, r: Recipe, pad_id: int) -> Any:
        from lrt.data.collate import ListwiseCollator

        return ListwiseCollator(pad_id, r.data.padding_side)

    def training_module(self, model: Any, objective: Any, r: Recipe, tok: Any, template: Any) -> Any:
        from lrt.objective.module import RerankModule

        return RerankModule(model, objective)

    def can_evaluate(self, id_ids: Sequence[int] | None) -> bool:
        return id_ids is not None  # identifier logits need the identifiers' token ids

    def ranker(self, model: Any, tok: Any, template: Any, r: Recipe, *, window: int, stride: int) -> Any:
        from lrt.ranking import ListwiseRanker  # the in-process ranking engine

        return ListwiseRanker(model, tok, template, window=window, stride=stride, max_length=r.data.max_length,
                        batch_size=r.eval.batch_size, padding_side=r.data.padding_side)

    def export_meta(self, r: Recipe, tok: Any) -> Any:
        from lrt.data.prompts import bos_outcome, rank_llm_serving
        from lrt.ranking import RerankerMeta

        w, stride = export_window(r)
        template = prompt_template(r)
        bos = bos_outcome(tok, template)  # what training did, pinned so serving does the same
        template = template.with_(bos="always" if bos == "prepended" else "never")
        return RerankerMeta(template=template.to_dict(), window=w, stride=stride, max_length=r.data.max_length,
                            bos=bos, rank_llm=rank_llm_serving(template, w, stride, r.data.max_length))

    def card_mode(self, r: Recipe) -> tuple[str, str]:
        scored = [t.name for t in r.loss if t.name != "lm"]  # every non-LM term scores first-token logits
        lm = r.lm_term() is not None
        if scored:
            s = (f"first-token scoring (FIRST-style): the logits of the first identifier token after `[` score every "
                 f"candidate in one forward pass, trained with {', '.join(scored)}")
            if lm:
                s += "; the language-modelling loss also trains it to generate the whole permutation"
            return "first_token", s + "."
        s = ("listwise generation: it writes the whole permutation (`[B] > [A] > ...`), trained with the "
             "language-modelling loss on the teacher's permutations")
        if r.identifier_scheme() in ("alpha", "special"):
            s += ("; its identifiers are single tokens, so first-token scoring (`mode=\"first_token\"`) also works, "
                  "but it was not trained directly")
        return "generate", s + "."

    def card_tags(self, mode: str) -> list[str]:
        return ["lrt", "reranker", "listwise-reranking", "learning-to-rank",
                {"first_token": "first-token-scoring", "generate": "listwise-generation"}[mode]]

    def summary_rows(self, s: dict[str, Any]) -> list[tuple[str, str]]:
        ls = s["lists"]
        rows = [("train lists", f"{ls['lists']}; tokens per list p50 {ls['tokens_p50']}, p95 {ls['tokens_p95']}, "
                                f"max {ls['tokens_max']} (max_length {ls['max_length']}); "
                                f"{ls['truncated']} cut to fit")]
        ps = s.get("passages")
        if ps:
            rows.append(("passages", passage_line(ps)))
        return rows


def passage_line(ps: dict[str, Any]) -> str:
    """`22000 (all); tokens p50 61, p95 140; 57.8% cut at prompt.max_passage_tokens=48`."""
    seen = "all" if ps["sampled"] == ps["passages"] else f"{ps['sampled']} sampled"
    return (f"{ps['passages']} ({seen}); tokens p50 {ps['tokens_p50']}, p95 {ps['tokens_p95']}; "
            f"{100 * ps['cut_share']:.1f}% cut at prompt.max_passage_tokens={ps['max_passage_tokens']}")


LISTWISE = ListwiseFamily()
