"""Run `lrt prep` with a spy on the `scores` teacher (kill tests in test_bad_input_prep.py).

The spy appends `start <window>` before the teacher computes a window and `done <window>` after
its answer was handed to the cache (`on_response` returned), with unbuffered appends that survive
SIGKILL. A window logged `done` has been committed; only `start`-without-`done` windows were in
flight when the process died.
"""
from __future__ import annotations

import json
import os
import sys

from lrt.prep import teachers

_orig = teachers.ScoresTeacher.rank_windows


def _spy(self, requests, on_response=None):
    fd = os.open(os.environ["LRT_SPY_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    out = []
    try:
        for i, req in enumerate(requests):
            key = json.dumps([req.qid, list(req.docids)])
            os.write(fd, f"start {key}\n".encode())

            def done(_j, resp, i=i, key=key):
                if on_response is not None:
                    on_response(i, resp)
                os.write(fd, f"done {key}\n".encode())

            out.extend(_orig(self, [req], on_response=done))
    finally:
        os.close(fd)
    return out


teachers.ScoresTeacher.rank_windows = _spy

if __name__ == "__main__":
    from lrt.cli import main

    sys.exit(main(["prep", *sys.argv[1:]]))
