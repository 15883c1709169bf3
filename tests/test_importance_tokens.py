"""fullrank's importance-aware LM loss on a real multi-digit tokenization: every token of the
identifier at output rank r ("[", each digit, "]") weighs 1 + 1/log2(r+1); separators and EOS
weigh alpha. The mapping comes from offsets, not from hard-coded token ids."""
from __future__ import annotations

import math

import torch

from lrt.config import LossTerm
from lrt.data.collate import ListwiseCollator, encode_example
from lrt.data.prompts import PromptTemplate
from lrt.data.schema import Candidate, ListwiseExample
from lrt.objective.objective import Objective


def test_multi_digit_identifier_tokens_get_their_rank_weight(tokenizers):
    tok = tokenizers["mistral"]  # splits digits like Mistral-v0.3's SentencePiece
    tpl = PromptTemplate.preset("rankgpt_numeric", system_in_user=True)
    n = 12
    cands = [Candidate(f"d{i}", f"text {i}") for i in range(n)]
    ranking = [f"d{i}" for i in (11, 2, 0, 5, 1, 3, 4, 6, 7, 8, 9, 10)]
    enc = encode_example(tok, tpl, ListwiseExample("q", "query", cands, ranking), max_length=4096, id_token_ids=None)
    batch = ListwiseCollator(tok.eos_token_id, "right")([enc])
    pieces = [tok.decode([t]) for t in batch["lm_targets"].tolist()]
    assert pieces[:4] == ["[", "1", "2", "]"]  # "[12]" is four tokens
    obj = Objective([LossTerm(name="lm", params={"importance": True, "alpha": 0.5})])
    w = obj.token_weights(batch).tolist()
    r_of = batch["lm_token_ranks"].tolist()
    expected_rank = 0
    for piece, r, wt in zip(pieces, r_of, w):
        if piece.strip() == "[":  # " [" carries the separator space and the bracket
            expected_rank += 1
        if piece.strip() in {">", ""} or piece == tok.eos_token:
            assert r == 0 and wt == 0.5, (piece, r, wt)
        else:
            assert r == expected_rank, (piece, r)
            assert math.isclose(wt, 1 + 1 / math.log2(r + 1), rel_tol=1e-6)
    assert expected_rank == n
    dens = obj.denominators(batch)
    assert dens["lm"] == len(pieces)  # fullrank normalises by the token count
    obj2 = Objective([LossTerm(name="lm", params={"importance": True, "normalize": "weights"})])
    assert torch.isclose(torch.tensor(obj2.denominators(batch)["lm"]), obj2.token_weights(batch).sum())
