"""Data preparation: import candidate lists, label them with a teacher, write canonical shards.

Pieces (each small and importable alone):
- `windows`: sliding-window schedules and the complete-label builder (single pass, freeze-prefix,
  full re-pass), asking the teacher for one *batch* of windows per step across all queries.
- `teachers`: the teacher interface and the `scores` teacher; `openai_teacher` and `hf_teacher`
  hold the remote and local LLM teachers.
- `cache`: the on-disk call cache that makes jobs resumable without paying twice.
- `importers`, `conversations`: readers for fullrank, TREC and RankZephyr/FIRST data.
- `config`, `job`, `output`: YAML jobs, the `lrt prep` entry point, shards, cards and merge.
"""
