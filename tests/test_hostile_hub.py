"""`lrt export --push-to-hub` as a hostile user drives it (issue 28), through the real CLI and the
real huggingface_hub client against the loopback FakeHub: only the files lrt wrote go up, never a
symlink's target (a link to the token file must not upload the token), no stray `.env`; a failed
push leaves the local export (its card included) as it was."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lrt.testing.fake_hub import FakeHub
from test_hostile_export import assert_refused, snapshot
from test_push_to_hub import TOKEN, _env, _lrt, run_dir  # noqa: F401 - run_dir is a fixture


@pytest.fixture
def final(run_dir, tmp_path) -> Path:  # noqa: F811
    d = tmp_path / "final"
    shutil.copytree(run_dir / "final", d)
    return d


def _token_file(tmp_path: Path) -> Path:
    home = tmp_path / "hf_home"
    home.mkdir(exist_ok=True)
    (home / "token").write_text(TOKEN)
    return home / "token"


def _uploaded(hub: FakeHub, repo: str) -> dict[str, bytes]:
    return hub.files.get(repo, {})


def _no_token(hub: FakeHub, *roots: Path) -> None:
    """Not in any upload; not in any file but the ones the test planted (token, .env)."""
    for repo, files in hub.files.items():
        assert not [n for n, b in files.items() if TOKEN.encode() in b], repo
    for root in roots:
        assert not [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and p.name not in ("token", ".env")
                    and TOKEN.encode() in p.read_bytes()]


# (case, what is added to the export before the push)
STRAYS = [
    ("a .env file", lambda d, tok: (d / ".env").write_text(f"HF_TOKEN={TOKEN}\n")),
    ("a link to the token file", lambda d, tok: (d / "notes.txt").symlink_to(tok)),
    ("a linked directory", lambda d, tok: (d / "cache").symlink_to(tok.parent, target_is_directory=True)),
    ("a stray file beside the weights", lambda d, tok: (d / "id_rsa").write_text("-----BEGIN KEY-----")),
]


@pytest.mark.parametrize("case,add", STRAYS, ids=[s[0] for s in STRAYS])
def test_only_the_files_lrt_wrote_are_uploaded(case, add, final, tmp_path):
    tok = _token_file(tmp_path)
    listed = set(__import__("json").loads((final / "lrt_export.json").read_text())["files"]) | {"lrt_export.json"}
    add(final, tok)
    before = snapshot(final)
    with FakeHub() as hub:
        p = _lrt(["export", str(final), "--push-to-hub", "me/r"], _env(hub, tok.parent))
    assert p.returncode == 0, p.stderr[-2000:]
    assert set(_uploaded(hub, "me/r")) == listed
    _no_token(hub, tmp_path)
    assert snapshot(final) == before  # the local card is not rewritten: the repo id is in the uploaded copy only
    assert 'Reranker.from_pretrained("me/r")' in _uploaded(hub, "me/r")["README.md"].decode()


def test_an_export_without_the_record_uploads_the_known_files_only(final, tmp_path):
    tok = _token_file(tmp_path)
    (final / "lrt_export.json").unlink()
    (final / ".env").write_text(f"HF_TOKEN={TOKEN}\n")
    (final / "secret.txt").symlink_to(tok)
    with FakeHub() as hub:
        p = _lrt(["export", str(final), "--push-to-hub", "me/old"], _env(hub, tok.parent))
    assert p.returncode == 0, p.stderr[-2000:]
    assert ".env" not in _uploaded(hub, "me/old") and "secret.txt" not in _uploaded(hub, "me/old")
    assert {"model.safetensors", "config.json", "README.md", "lrt_reranker.json"} <= set(_uploaded(hub, "me/old"))
    _no_token(hub, tmp_path)


# (case, how the export is broken or the push is wrong, needle)
REFUSED = [
    ("a listed file replaced by a link to the token",
     lambda d, tok: ((d / "tokenizer_config.json").unlink(), (d / "tokenizer_config.json").symlink_to(tok)),
     "me/r", "is a symlink"),
    ("a listed file missing", lambda d, tok: (d / "tokenizer.json").unlink(), "me/r", "missing or not a regular file"),
    ("a record listing a path outside", lambda d, tok: (d / "lrt_export.json").write_text(
        '{"kind": "full", "files": ["../hf_home/token"]}'), "me/r", "a path outside the export"),
    ("an invalid repo name", lambda d, tok: None, "bad//name", "not a valid Hub repo id"),
    ("a repo name with spaces", lambda d, tok: None, "me/a b", "not a valid Hub repo id"),
]


@pytest.mark.parametrize("case,breakit,repo,needle", REFUSED, ids=[r[0] for r in REFUSED])
def test_a_refused_push_sends_nothing_and_changes_nothing(case, breakit, repo, needle, final, tmp_path):
    tok = _token_file(tmp_path)
    breakit(final, tok)
    before = snapshot(final)
    with FakeHub() as hub:
        p = _lrt(["export", str(final), "--push-to-hub", repo], _env(hub, tok.parent))
    assert_refused(p, needle)
    assert hub.requests == [] and hub.files == {}
    assert snapshot(final) == before
    assert TOKEN not in p.stdout + p.stderr


def test_a_bad_repo_name_is_refused_before_a_run_is_exported(run_dir, tmp_path):  # noqa: F811
    with FakeHub() as hub:
        p = _lrt(["export", str(run_dir), "--out", str(tmp_path / "exp"), "--push-to-hub", "bad//name"],
                 _env(hub, tmp_path / "home"))
    assert_refused(p, "not a valid Hub repo id")
    assert not (tmp_path / "exp").exists() and hub.requests == []


def test_a_push_the_hub_rejects_leaves_the_card(final, tmp_path):
    """The Hub answers 400 to the card's metadata check: one error line, the local card as it was."""
    (final / "README.md").write_text("no metadata block\n")
    before = snapshot(final)
    with FakeHub() as hub:
        p = _lrt(["export", str(final), "--push-to-hub", "me/r"], _env(hub, tmp_path / "home"))
    assert_refused(p, "push to me/r failed")
    assert snapshot(final) == before and hub.files == {}
    assert TOKEN not in p.stdout + p.stderr
