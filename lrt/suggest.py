"""`did you mean 'x'?` for a mistyped name: one wording and one matcher for every message.

Why one helper: the hint was written six times with drifting cut-offs and punctuation. A leaf
module (no lrt imports), so every layer, the recipe schema and the CLI included, can use it.
"""
from __future__ import annotations

import difflib
from typing import Iterable, Literal

Style = Literal["paren", "sentence", "clause"]


def closest(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The choice most similar to `word` (difflib ratio >= cutoff), or None."""
    close = difflib.get_close_matches(str(word), sorted(set(map(str, choices))), n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str], *, cutoff: float = 0.6, prefix: str = "",
                 style: Style = "paren") -> str:
    """The hint to append to a message, or "" when nothing is close.

    paren: " (did you mean 'x'?)"; sentence: " Did you mean 'x'?"; clause: "; did you mean 'x'?"
    (inside a parenthesis the caller already opened). `prefix` is prepended to the match, e.g. the
    dotted recipe path `train.`.
    """
    match = closest(word, choices, cutoff)
    if match is None:
        return ""
    name = repr(prefix + match)
    if style == "sentence":
        return f" Did you mean {name}?"
    if style == "clause":
        return f"; did you mean {name}?"
    return f" (did you mean {name}?)"
