"""The call cache: answers persist across processes, repeats in a batch are paid once, failures never."""
from __future__ import annotations

from lrt.prep.cache import CachedTeacher, CallCache
from lrt.prep.teachers import ScoresTeacher, WindowRequest, WindowResponse


class Flaky:
    """Counts calls; fails every request whose qid starts with 'bad'."""

    kind, scheme = "flaky", "alpha"

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.inner = ScoresTeacher({}, source="none", scheme="alpha")

    def describe(self):
        return {"kind": self.kind}

    def cache_key(self, req):
        return self.inner.cache_key(req)

    def stats(self):
        return {}

    def rank_windows(self, requests, on_response=None):
        out = []
        for i, r in enumerate(requests):
            self.asked.append(r.qid)
            resp = (WindowResponse(None, None, error="boom") if r.qid.startswith("bad")
                    else self.inner.rank_windows([r])[0])
            out.append(resp)
            if on_response:
                on_response(i, resp)
        return out


def _req(qid: str, docs: str) -> WindowRequest:
    return WindowRequest(qid, "q", tuple(docs), tuple(docs))


def test_cache_dedupes_persists_and_skips_failures(tmp_path):
    path = tmp_path / "c.sqlite"
    inner = Flaky()
    teacher = CachedTeacher(inner, CallCache(path))
    reqs = [_req("a", "xyz"), _req("b", "xyz"), _req("a", "xyz"), _req("bad", "xy")]
    out = teacher.rank_windows(reqs)
    assert inner.asked == ["a", "b", "bad"]  # the repeated window of "a" was paid once
    assert [r.cached for r in out] == [False, False, True, False] and out[3].error == "boom"
    assert out[2].order == out[0].order == [0, 1, 2]
    teacher.cache.close()

    again = Flaky()  # as after a restart: a new process opening the same file
    cache = CallCache(path)
    assert len(cache) == 2 and set(cache.windows()) == {("a", tuple("xyz")), ("b", tuple("xyz"))}
    out = CachedTeacher(again, cache).rank_windows(reqs)
    assert again.asked == ["bad"] and [r.cached for r in out] == [True, True, True, False]


def test_get_many_handles_more_keys_than_sqlite_parameters(tmp_path):
    cache = CallCache(tmp_path / "c.sqlite")
    for i in range(1200):
        cache.put(f"k{i}", f"raw{i}", commit=False)
    cache.commit()
    got = cache.get_many([f"k{i}" for i in range(0, 1300, 1)])
    assert len(got) == 1200 and got["k1199"] == "raw1199"
