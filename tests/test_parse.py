"""`parse_permutation`: RankGPT's repair rules, for every identifier scheme."""
from __future__ import annotations

import pytest

from lrt.data.parse import format_permutation, parse_permutation
from lrt.data.prompts import identifier_labels

ALPHA = identifier_labels("alpha", 4)
NUM = identifier_labels("numeric", 4)
SPECIAL = identifier_labels("special", 4)


def test_valid_permutation_needs_no_repair():
    p = parse_permutation("[C] > [A] > [D] > [B]", ALPHA)
    assert p.order == [2, 0, 3, 1] and p.valid and p.extracted == 4
    assert p.repairs() == {"duplicates": 0, "out_of_range": 0, "missing": 0}


def test_duplicates_keep_first_and_missing_are_appended_in_current_order():
    p = parse_permutation("[C] > [A] > [C]", ALPHA)
    assert p.order == [2, 0, 1, 3]
    assert (p.duplicates, p.out_of_range, p.missing, p.valid) == (1, 0, 2, False)


def test_out_of_range_ids_are_dropped():
    p = parse_permutation("[Z] > [B] > [E] > [A] > [D] > [C]", ALPHA)
    assert p.order == [1, 0, 3, 2] and p.out_of_range == 2 and p.missing == 0


def test_alpha_letters_count_only_inside_brackets_and_any_case():
    p = parse_permutation("Sure, A is good. Ranking: [b] > [ D ] > [a]", ALPHA)
    assert p.order == [1, 3, 0, 2] and p.missing == 1


def test_numeric_follows_rankgpt_every_number_counts():
    assert parse_permutation("[4] > [2] > [1] > [3]", NUM).order == [3, 1, 0, 2]
    p = parse_permutation("4 > 2, [0] [05]", NUM)  # 0 is out of range, 05 is 5: out of range too
    assert p.order == [3, 1, 0, 2] and p.out_of_range == 2 and p.missing == 2


def test_special_tokens_with_or_without_brackets():
    p = parse_permutation("<id_2><id_4> > [<id_1>] <id_9>", SPECIAL)
    assert p.order == [1, 3, 0, 2] and p.out_of_range == 1 and p.missing == 1


@pytest.mark.parametrize("text", ["", "I cannot rank these.", "[] > []"])
def test_garbage_becomes_identity(text):
    p = parse_permutation(text, ALPHA)
    assert p.order == [0, 1, 2, 3] and p.missing == 4 and not p.valid


def test_empty_window_and_bad_labels():
    assert parse_permutation("[A]", []).order == []
    with pytest.raises(ValueError, match="unsupported identifier labels"):
        parse_permutation("[A]", ["x", "y"])


def test_format_round_trips_for_every_scheme():
    for labels in (ALPHA, NUM, SPECIAL):
        text = format_permutation([3, 0, 2, 1], labels)
        assert parse_permutation(text, labels).order == [3, 0, 2, 1]
    assert format_permutation([1, 0], ALPHA[:2]) == "[B] > [A]"
