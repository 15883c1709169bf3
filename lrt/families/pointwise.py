"""The pointwise family (`scoring.mode: pointwise`): one sequence per (query, candidate) in a yes/no
pair template (lrt.data.pointwise); a candidate's score is logit(yes) - logit(no) at the answer
position, and the recipe's ranking terms train over each list's pair scores.
"""
from __future__ import annotations

from typing import Any, Sequence

from lrt.config import Recipe
from lrt.families.listwise import passage_line


def pointwise_template(r: Recipe) -> Any:
    """The preset's pair template with the recipe's own parts: `prompt.prefix` / `prompt.suffix`
    replace the text before / after the pair body, `scoring.instruction` fills {instruction},
    `prompt.bos=always` puts the tokenizer's BOS first (auto and never: none, as the presets'
    published usage code). `prompt.system` and `prompt.passage` are refused by the recipe check."""
    from lrt.data.pointwise import PointwiseTemplate

    return PointwiseTemplate.preset(r.prompt.preset, instruction=r.scoring.instruction, prefix=r.prompt.prefix,
                                    suffix=r.prompt.suffix, max_passage_tokens=r.prompt.max_passage_tokens,
                                    bos=r.prompt.bos == "always")


class PointwiseFamily:
    name = "pointwise"
    pairs = True
    rerank_modes: tuple[str, ...] = ("pointwise",)
    default_rerank_mode = "pointwise"
    card_kind = "pointwise"

    def check(self, r: Recipe) -> list[str]:
        return []  # the declarative rules (lrt.config.SCORING_MODES) cover it

    def validate_text(self, r: Recipe) -> str:
        return "pointwise yes/no pairs"

    def template(self, r: Recipe) -> Any:
        return pointwise_template(r)

    def collator(self, r: Recipe, pad_id: int) -> Any:
        from lrt.data.pointwise import PointwiseCollator

        return PointwiseCollator(pad_id, r.data.padding_side, r.scoring.negatives, r.train.seed)

    def training_module(self, model: Any, objective: Any, r: Recipe, tok: Any, template: Any) -> Any:
        from lrt.data.pointwise import yes_no_ids
        from lrt.objective.pointwise import PointwiseModule

        return PointwiseModule(model, objective, *yes_no_ids(tok, template), r.scoring.pair_batch)

    def can_evaluate(self, id_ids: Sequence[int] | None) -> bool:
        return True  # the answer words are checked to be one token each when the data loads

    def ranker(self, model: Any, tok: Any, template: Any, r: Recipe, *, window: int, stride: int) -> Any:
        # one sequence per (query, candidate), eval.batch_size pairs per forward; no window
        from lrt.ranking import PairRanker

        return PairRanker(model, tok, template, max_length=r.data.max_length, batch_size=r.eval.batch_size,
                          padding_side=r.data.padding_side)

    def export_meta(self, r: Recipe, tok: Any) -> Any:
        from lrt.ranking import RerankerMeta

        t = pointwise_template(r)  # what training encoded: the recipe's prefix, suffix, instruction and BOS
        return RerankerMeta(template=t.to_dict(), window=r.eval.batch_size, stride=1, max_length=r.data.max_length,
                            bos="prepended" if t.bos else "none", mode=self.name)

    def card_mode(self, r: Recipe) -> tuple[str, str]:
        scored = [t.name for t in r.loss if t.name != "lm"]
        return self.name, (f"pointwise yes/no scoring: each (query, passage) pair gets logit(yes) - logit(no) at "
                           f"the answer position, trained with {', '.join(scored) or 'the LM loss'} over each "
                           "list's pair scores.")

    def card_tags(self, mode: str) -> list[str]:
        return ["lrt", "reranker", "pointwise-reranking", "learning-to-rank"]

    def summary_rows(self, s: dict[str, Any]) -> list[tuple[str, str]]:
        """In pair terms: the token budget (data.max_length) holds one pair, not a list."""
        ps = s.get("pairs")
        if not ps:  # a summary of an older lrt: lists only
            ls = s["lists"]
            return [("train lists", f"{ls['lists']} (pairs: data.max_length {ls['max_length']} per pair)")]
        rows = [("train pairs", f"{ps['pairs']} in {ps['lists']} lists; tokens per pair p50 {ps['tokens_p50']}, "
                                f"p95 {ps['tokens_p95']}, max {ps['tokens_max']} (max_length {ps['max_length']} per "
                                f"pair); {ps['truncated']} pairs cut to fit")]
        if s.get("passages"):
            rows.append(("passages", passage_line(s["passages"])))
        return rows


POINTWISE = PointwiseFamily()
