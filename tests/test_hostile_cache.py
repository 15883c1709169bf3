"""The tokenised cache against a hostile user, through `lrt prep tokenize`: a changed token id in an Arrow
piece, a truncated or missing piece, `data.cache_dir` naming a file, a full disk or a read-only
directory are each one `error:` line and exit 2 with no temporary or partial store left; every setting
that changes the encoding changes the fingerprint; two processes building one cache both succeed and
leave one store."""
from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lrt.cli import main as lrt_main
from lrt.data.schema import write_examples
from lrt.testing.tiny import random_examples

REPO = Path(__file__).resolve().parents[1]
BACKBONE = REPO / "lrt" / "assets" / "tiny-backbone"


def recipe(d: Path, model: Path = BACKBONE, n: int = 24, **data) -> Path:
    if not (d / "train.jsonl").exists():
        write_examples(random_examples(n, 5, seed=0), d / "train.jsonl")
    r = {"model": {"name_or_path": str(model)},
         "data": {"train": str(d / "train.jsonl"), "max_length": 512, "cache_dir": str(d / "cache"), **data},
         "prompt": {"preset": "compact", "max_passage_tokens": 24},
         "train": {"max_steps": 1, "per_device_batch_size": 1, "lr": 1e-3, "save_final": False},
         "eval": {"at_start": False, "at_end": False}, "log": {"progress": False}, "output_dir": str(d / "run")}
    p = d / "recipe.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


def tokenize(capsys, path: Path, *overrides: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = lrt_main(["prep", "tokenize", str(path), *overrides])
    return rc, capsys.readouterr().err


def one_error(rc: int, err: str, *needles: str) -> str:
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def stores(cache: Path, kind: str = "encoded") -> list[Path]:
    return sorted(p for p in cache.glob(f"{kind}-*") if p.is_dir())


def no_partial(cache: Path) -> None:
    assert not [p for p in cache.rglob(".tmp-*")], list(cache.rglob(".tmp-*"))
    for kind in ("examples", "encoded"):
        for s in stores(cache, kind):
            assert (s / "manifest.json").is_file() or not any(s.rglob("*.arrow")), s


def pieces(store: Path) -> list[Path]:
    meta = json.loads((store / "manifest.json").read_text())
    return [store / p for p in meta["pieces"]]


def _change_a_token_id(piece: Path) -> None:
    """One token id + 1 in place (an encoded store), or one letter of a passage (the examples store)."""
    import pyarrow as pa

    table = pa.ipc.open_stream(pa.memory_map(str(piece), "r")).read_all()
    blob = piece.read_bytes()
    if "input_ids" in table.column_names:
        ids = table.column("input_ids")[0].as_py()
        needle, changed = struct.pack("<4i", *ids[:4]), struct.pack("<4i", ids[0], ids[1] + 1, ids[2], ids[3])
    else:
        needle, changed = b"quick", b"quack"
    at = blob.index(needle)
    piece.write_bytes(blob[:at] + changed + blob[at + len(needle):])


TAMPER = {
    "changed_token_id": (_change_a_token_id, "does not match its digest"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "truncated or changed"),
    "missing": (lambda p: p.unlink(), "is missing"),
    "emptied": (lambda p: p.write_bytes(b""), "truncated or changed"),
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_tampered_pieces_are_one_clear_error(tmp_path, capsys, case):
    path = recipe(tmp_path)
    assert tokenize(capsys, path)[0] == 0
    [store] = stores(tmp_path / "cache")
    fn, needle = TAMPER[case]
    fn(pieces(store)[0])
    line = one_error(*tokenize(capsys, path), needle, str(store), "delete")
    assert "data cache" in line
    # the examples store is checked too
    ex = stores(tmp_path / "cache", "examples")[0]
    shutil.rmtree(store)
    fn(pieces(ex)[0])
    one_error(*tokenize(capsys, path), needle, str(ex))


def test_cache_dir_naming_a_file(tmp_path, capsys):
    path = recipe(tmp_path)
    (tmp_path / "cache").write_text("not a directory\n")
    one_error(*tokenize(capsys, path), "data.cache_dir", "is a file")
    assert (tmp_path / "cache").read_text() == "not a directory\n"  # the file is intact


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only directories")
def test_read_only_cache_dir(tmp_path, capsys):
    path = recipe(tmp_path)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache").chmod(0o555)
    try:
        one_error(*tokenize(capsys, path), "data.cache_dir", "cannot write the tokenised cache")
    finally:
        (tmp_path / "cache").chmod(0o755)
    no_partial(tmp_path / "cache")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.mark.parametrize("store", ["examples", "encoded"])
def test_full_disk_is_one_error_and_leaves_nothing_partial(tmp_path, capsys, store):
    """A full disk, as the kernel reports a file-size limit (EFBIG; CPython ignores SIGXFSZ): the write
    fails mid-store, the temporary directory goes, one error line names the directory and the fix."""
    ref = tmp_path / "ref"
    ref.mkdir()
    assert tokenize(capsys, recipe(ref, n=120))[0] == 0
    sizes = {k: max(p.stat().st_size for s in stores(ref / "cache", k) for p in pieces(s)) for k in ("examples", "encoded")}
    d = tmp_path / "run"
    d.mkdir()
    shutil.copy(ref / "train.jsonl", d / "train.jsonl")
    path = recipe(d, n=120)
    # room for every file but the store under test (pieces are written in 256-row batches: the limit hits mid-file)
    limit = sizes["examples"] // 2 if store == "examples" else (sizes["examples"] + sizes["encoded"]) // 2
    if store == "encoded":
        assert sizes["encoded"] > limit >= sizes["examples"], sizes  # else this case tests nothing

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    res = subprocess.run([sys.executable, "-m", "lrt.cli", "prep", "tokenize", str(path)], env=_env(), cwd=d,
                         capture_output=True, text=True, timeout=300, preexec_fn=cap)
    one_error(res.returncode, res.stderr, "data.cache_dir", "cannot write the tokenised cache", "too large")
    no_partial(d / "cache")
    assert stores(d / "cache", "encoded") == [] or not (stores(d / "cache", "encoded")[0] / "manifest.json").exists()
    assert tokenize(capsys, path)[0] == 0  # with room again, the build completes


@pytest.mark.slow  # two building processes, ~10 s
def test_two_processes_building_one_cache_both_succeed(tmp_path):
    path = recipe(tmp_path, n=300)
    cmd = [sys.executable, "-m", "lrt.cli", "prep", "tokenize", str(path)]
    procs = [subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err and "tokenised cache ready: 300 lists" in out
    assert len(stores(tmp_path / "cache")) == 1 and len(stores(tmp_path / "cache", "examples")) == 1
    no_partial(tmp_path / "cache")


def test_losing_the_publish_race_uses_the_winners_store(tmp_path):
    from lrt.data.cache import _publish

    for marker in ("manifest.json", "done.json"):
        final, tmp = tmp_path / f"final-{marker}", tmp_path / f".tmp-{marker}"
        for d in (final, tmp):
            d.mkdir()
            (d / marker).write_text("{}")
            (d / "part.arrow").write_bytes(b"x")
        _publish(tmp, final, marker)  # "Directory not empty" before: the shard marker is done.json
        assert not tmp.exists() and (final / marker).is_file()


def _tokenizer_copy(tmp: Path, edit) -> Path:
    d = tmp / "model"
    shutil.copytree(BACKBONE, d)
    edit(d)
    return d


def _set_config(key, value):
    def edit(d: Path) -> None:
        cfg = json.loads((d / "tokenizer_config.json").read_text())
        cfg[key] = value
        (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return edit


FINGERPRINT = {
    "max_length": lambda d: ([], None, ["data.max_length=600"]),
    "max_passage_tokens": lambda d: ([], None, ["prompt.max_passage_tokens=20"]),
    "prefix": lambda d: ([], None, ['prompt.prefix="Q {query} -"']),
    "system_in_user": lambda d: ([], None, ["prompt.system=Rank.", "prompt.system_in_user=true"]),
    "bos": lambda d: ([], None, ["prompt.bos=always"]),
    "window": lambda d: ([], None, ["data.window=4"]),
    "chat_template_file": lambda d: ([], _tokenizer_copy(d, lambda m: (m / "chat_template.jinja").write_text(
        (m / "chat_template.jinja").read_text().replace("assistant", "bot"))), []),
    "split_special_tokens": lambda d: ([], _tokenizer_copy(d, _set_config("split_special_tokens", True)), []),
}


def test_the_fingerprint_covers_every_setting_that_changes_the_encoding(tmp_path, capsys):
    base = tmp_path / "base"
    base.mkdir()
    path = recipe(base)
    assert tokenize(capsys, path)[0] == 0
    [first] = stores(base / "cache")
    keys = {first.name}
    for name, make in FINGERPRINT.items():
        d = tmp_path / name
        d.mkdir()
        shutil.copy(base / "train.jsonl", d / "train.jsonl")
        _, model, overrides = make(d)
        p = recipe(d, model=model or BACKBONE, cache_dir=str(base / "cache"))
        rc, err = tokenize(capsys, p, *overrides)
        assert rc == 0, (name, err[-2000:])
        new = {s.name for s in stores(base / "cache")} - keys
        assert len(new) == 1, f"{name}: the encoding changed but the cache was reused"
        keys |= new
    assert tokenize(capsys, path)[0] == 0 and {s.name for s in stores(base / "cache")} == keys  # same recipe: reused
