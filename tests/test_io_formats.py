"""Readers for the formats users have: MS MARCO TSV, BEIR folders, TREC runs/qrels; streamed corpora."""
from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from lrt.errors import DataError
from lrt.io import beir_file, read_corpus, read_corpus_subset, read_qrels, read_run, read_topics

FIX = Path(__file__).resolve().parent / "fixtures" / "e2e"
BEIR = FIX / "beir" / "scifact-mini"


def test_beir_folder_files_and_formats():
    topics = read_topics(BEIR / "queries.jsonl")  # one JSON object per line
    assert topics["1"] == "0-dimensional biomaterials show inductive properties." and len(topics) == 3
    qrels = read_qrels(BEIR / "qrels" / "test.tsv")  # header + 3 columns
    assert qrels == {"1": {"31715818": 1}, "3": {"14717500": 1}, "5": {"13734012": 1}}
    corpus = read_corpus(BEIR / "corpus.jsonl")
    assert corpus["4983"]["title"].startswith("Microstructural") and len(corpus) == 8
    # the folder itself stands for each of its files
    assert read_topics(BEIR) == topics and read_qrels(BEIR) == qrels and read_corpus(BEIR) == corpus
    assert beir_file(BEIR, "qrels") == BEIR / "qrels" / "test.tsv"
    with pytest.raises(DataError, match="a folder without queries.jsonl"):
        read_topics(BEIR / "qrels")


def test_msmarco_tsv_and_trec_files():
    topics = read_topics(FIX / "dl19" / "msmarco-test2019-queries.tsv")
    assert topics["264014"] == "how long is life cycle of flea"
    run = read_run(FIX / "dl19" / "run.dl19-passage.bm25.top10.txt")
    assert set(run) == set(topics) and all(len(v) == 10 for v in run.values())
    qrels = read_qrels(FIX / "dl19" / "qrels.dl19-passage.txt")
    assert set(qrels) == set(topics) and sum(map(len, qrels.values())) == 1291


def test_corpus_subset_keeps_only_needed_docids_and_still_checks_lines(tmp_path):
    full = read_corpus(FIX / "msmarco" / "collection.tsv")
    need = {"96852", "9000003", "not-there"}
    sub = read_corpus_subset(FIX / "msmarco" / "collection.tsv", need)
    assert set(sub) == {"96852", "9000003"} and sub["96852"] == full["96852"]
    gz = tmp_path / "c.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write((BEIR / "corpus.jsonl").read_text())
    assert set(read_corpus_subset(gz, {"4983"})) == {"4983"}
    bad = tmp_path / "c.tsv"
    bad.write_text("1\ta\n2 no tab here\n3\tc\n")
    with pytest.raises(DataError, match=r"c\.tsv:2: expected 'docid<TAB>text'"):
        read_corpus_subset(bad, {"3"})  # a malformed line is an error even when its docid is not needed


@pytest.mark.parametrize("name,text,needle", [
    ("q.jsonl", '{"_id": "1", "text": "a"}\n{"_id": "1", "text": "b"}\n', r"q\.jsonl:2: duplicate query id"),
    ("q.jsonl", '{"_id": "1"}\n', r"q\.jsonl:1: need a query id"),
    ("q.jsonl", '{"_id": "1", "text": "a"}\n{"_id": "2", "te', r"q\.jsonl:2: invalid JSON \(truncated last line\?"),
    ("qrels.tsv", "query-id\tcorpus-id\tscore\n1\td1\t1\n1\td2\n", r"qrels\.tsv:3: expected 4 columns .* or 3"),
    ("qrels.tsv", "query-id\tcorpus-id\tscore\n1\td1\tx\n", r"qrels\.tsv:2: relevance 'x' is not an integer"),
])
def test_format_errors_name_file_and_line(tmp_path, name, text, needle):
    p = tmp_path / name
    p.write_text(text)
    reader = read_topics if name.startswith("q.") else read_qrels
    with pytest.raises(DataError, match=needle):
        reader(p)


def test_streamed_corpus_memory_is_bounded_by_the_needed_docids(tmp_path):
    """200k passages (~66 MB, MS MARCO-length texts): keeping 100 needed docids must not grow the peak RSS
    by more than 25 MB, where reading it whole costs ~126 MB (measured: 0 MB vs 126 MB)."""
    import subprocess
    import sys

    words = "the quick brown fox jumps over lazy dog passage text about many things river city market".split()
    with (tmp_path / "collection.tsv").open("w") as f:
        for i in range(200_000):
            f.write(f"{i}\t" + " ".join(words[(i + k) % len(words)] for k in range(55)) + "\n")
    # peak RSS of the read alone: the import's own transient peak (e.g. compiling .pyc in a fresh clone) is
    # cleared first through /proc/self/clear_refs, then VmHWM (peak) is compared with VmRSS before the read
    probe = (
        "import re, sys\n"
        "from lrt.io import read_corpus, read_corpus_subset\n"
        "kb = lambda k: int(re.search(k + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "r0 = kb('VmRSS')\n"
        "c = (read_corpus_subset(sys.argv[1], {str(i) for i in range(0, 200_000, 2000)}) if sys.argv[2] == 'subset'\n"
        "     else read_corpus(sys.argv[1]))\n"
        "print(len(c), (kb('VmHWM') - r0) // 1024)\n")
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to reset and read the peak RSS")
    out = {}
    for mode in ("subset", "whole"):
        p = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "collection.tsv"), mode],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        out[mode] = [int(x) for x in p.stdout.split()]
    assert out["subset"][0] == 100 and out["whole"][0] == 200_000
    assert out["subset"][1] < 25 and out["whole"][1] > 3 * max(out["subset"][1], 10), out


def test_prep_trec_job_reads_a_beir_folder(tmp_path, monkeypatch):
    """A job's source.topics/corpus/qrels may name a BEIR folder: its queries.jsonl, corpus.jsonl, qrels/test.tsv."""
    import pyarrow.parquet as pq

    from lrt.prep.job import load_job, run_shard

    monkeypatch.chdir(tmp_path)
    (tmp_path / "j.yaml").write_text(
        f"name: beir\nsource: {{kind: trec, run: {BEIR}/bm25.trec, topics: {BEIR}, corpus: {BEIR}, qrels: {BEIR}}}\n"
        "output: {dir: out, call_log: false}\ncache: {enabled: false}\n")
    cfg = load_job(tmp_path / "j.yaml")
    assert cfg.source.corpus.endswith("corpus.jsonl") and cfg.source.qrels.endswith("test.tsv")
    run_shard(cfg)
    rows = {r["qid"]: r for r in pq.read_table(tmp_path / "out" / "data.parquet").to_pylist()}
    assert set(rows) == {"1", "3", "5"} and rows["1"]["query"].startswith("0-dimensional")
    assert {q["docid"]: q["relevance"] for q in rows["1"]["qrels"]} == {"31715818": 1}
