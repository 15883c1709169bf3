"""Import RankZephyr / FIRST conversation JSONL (`{"conversations": [system, user, assistant]}`).

The rows carry no ids, only rendered prompts: the query and passages are recovered from the user
turn (`[A] passage` / `[1] passage` lines between the prefix and the `Search Query:` suffix) and
the ranking from the assistant turn (`[B] > [A] > ...`, parsed with the shared repair rules and
counted when it needed repair). Roles are taken from `from`/`role` when present, otherwise by
position, as the original loaders do (first-anchor.md section 2). Docids are invented as
`<qid>/<k>` (k = display position), qid from `qid`/`id` or `<file stem>:<line>`.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from lrt.data.parse import parse_permutation
from lrt.data.schema import Candidate, ListwiseExample, OnInvalid, SkipReport
from lrt.errors import DataError
from lrt.prep.importers import Imported, Problems, in_shard, iter_jsonl

_USER = {"user", "human"}
_ASSISTANT = {"assistant", "gpt", "model"}
_SYSTEM = {"system"}
_LINE = re.compile(r"^\[([A-Za-z]|\d{1,3})\] ?", re.M)
_NUM = re.compile(r"I will provide you with (\d+) passages")
_SUFFIX = re.compile(r"Search Query: (.*?)\.?\s*\n?Rank the (\d+) passages", re.S)
_PREFIX_QUERY = re.compile(r"search query: (.*?)\.?\n", re.S | re.I)


def _turns(row: object) -> tuple[str, str]:
    """(user prompt, assistant target) from a conversation row; ValueError says what is wrong."""
    if not isinstance(row, dict) or not isinstance(row.get("conversations"), list):
        raise ValueError('expected {"conversations": [{"value": ...}, ...]}')
    conv = row["conversations"]
    if not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in conv):
        raise ValueError("every turn needs a string `value`")
    roles = [str(t.get("from", t.get("role", ""))).lower() for t in conv]
    if all(roles):
        users = [t["value"] for t, r in zip(conv, roles) if r in _USER]
        answers = [t["value"] for t, r in zip(conv, roles) if r in _ASSISTANT]
        unknown = sorted(set(roles) - _USER - _ASSISTANT - _SYSTEM)
        if unknown or len(users) != 1 or len(answers) != 1:
            raise ValueError(f"need one user and one assistant turn (roles {roles})")
        return users[0], answers[0]
    if len(conv) not in (2, 3):
        raise ValueError(f"expected 2 or 3 turns [system,] user, assistant; got {len(conv)}")
    return conv[-2]["value"], conv[-1]["value"]


def parse_prompt(prompt: str) -> tuple[str, list[tuple[str, str]]]:
    """(query, [(label, passage)]) from a RankGPT/RankZephyr user prompt."""
    m = None
    for m in _SUFFIX.finditer(prompt):
        pass
    if m is None:
        raise ValueError("no 'Search Query: ... Rank the N passages' suffix in the user turn")
    query = m.group(1).strip()
    head = prompt[: m.start()]
    marks = list(_LINE.finditer(head))
    if not marks:
        raise ValueError("no '[A] passage' / '[1] passage' lines before the suffix")
    passages = []
    for k, mk in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(head)
        passages.append((mk.group(1), head[mk.end():end].strip()))
    if not query:
        pq = _PREFIX_QUERY.search(head[: marks[0].start()])
        query = pq.group(1).strip() if pq else ""
    labels = [lab for lab, _ in passages]
    numeric = labels[0].isdigit()
    expect = [str(i + 1) for i in range(len(labels))] if numeric else [chr(65 + i) for i in range(len(labels))]
    if labels != expect:
        raise ValueError(f"passage identifiers {labels[:5]}... are not consecutive from {expect[0]}")
    declared = _NUM.search(head)
    announced = {int(m.group(2))} | ({int(declared.group(1))} if declared else set())
    if announced != {len(passages)}:
        raise ValueError(f"the prompt announces {sorted(announced)} passages but lists {len(passages)}")
    return query, passages


def _hub_rows(name: str, split: str):
    """Rows of a `datasets` source (hub name, or a local dataset folder), numbered from 1."""
    try:
        import datasets
        ds = datasets.load_dataset(name, split=split)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
        raise DataError(f"source.path: {name!r} is neither a local file nor a loadable `datasets` source "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); give a local "
                        "JSONL file, or a hub name such as castorini/rank_zephyr_training_data (needs network "
                        "or the datasets cache)") from None
    for i, row in enumerate(ds, 1):
        yield i, row


def import_conversations(path: str, *, on_invalid: OnInvalid = "error", limit: int | None = None,
                         num_shards: int = 1, shard_id: int = 0, split: str = "train") -> Imported:
    """Rows -> examples with candidates in prompt order and the assistant's ranking.

    `path` is a local JSONL/JSON file when it exists, otherwise a `datasets` name or folder
    (`castorini/rank_zephyr_training_data`), read with `datasets.load_dataset(path, split=split)`."""
    report = SkipReport()
    problems = Problems(on_invalid, report)
    counts: Counter = Counter()
    out: list[ListwiseExample] = []
    stem = Path(path).name.split(".")[0]
    local = Path(path).is_file()
    rows = iter_jsonl(path) if local else _hub_rows(path, split)
    for k, (n, row) in enumerate(rows):
        if limit is not None and k >= limit:
            break
        if not in_shard(k, num_shards, shard_id):
            continue
        report.total += 1
        where = f"{path}:{n}" if local else f"{path}[{split}] row {n}"
        if isinstance(row, DataError):
            problems(where, str(row).split(": ", 1)[1], "fix or delete the line")
            continue
        try:
            prompt, target = _turns(row)
            query, passages = parse_prompt(prompt)
        except ValueError as e:
            problems(where, str(e), "check that the row is a RankZephyr/FIRST listwise conversation")
            continue
        if not query:
            problems(where, "empty search query", "fill in the query in the prompt")
            continue
        empty = [lab for lab, text in passages if not text]
        if empty:
            problems(where, f"passage [{empty[0]}] has empty text", "fill it in or drop the row")
            continue
        labels = [lab for lab, _ in passages]
        parsed = parse_permutation(target, labels)
        if parsed.extracted == 0 or parsed.extracted == parsed.out_of_range:
            problems(where, f"the assistant turn names no passage identifier: {target[:60]!r}",
                     "the target must look like [B] > [A] > ...")
            continue
        counts["repaired_targets"] += not parsed.valid
        for key, v in parsed.repairs().items():
            counts[f"target_{key}"] += v
        qid = str(row.get("qid", row.get("id", f"{stem}:{n}")))
        ids = [f"{qid}/{i + 1}" for i in range(len(passages))]
        cands = [Candidate(d, text) for d, (_, text) in zip(ids, passages)]
        out.append(ListwiseExample(qid, query, cands, [ids[i] for i in parsed.order]))
    return Imported(out, report, dict(counts))
