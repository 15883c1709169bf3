"""A loopback stand-in for the Hugging Face Hub API (create_repo + upload_folder with regular
uploads), so `lrt export --push-to-hub` is tested offline through the real huggingface_hub client
(HF_ENDPOINT points at it). Records every request and its Authorization header."""
from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Authorization)
        self.repos: dict[str, dict] = {}
        self.files: dict[str, dict[str, bytes]] = {}
        self.validated: list[str] = []  # README.md contents sent to /api/validate-yaml
        hub = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _reply(self, code: int, obj) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                hub.requests.append(("POST", self.path, self.headers.get("Authorization")))
                base = f"http://127.0.0.1:{hub.port}"
                if self.path == "/api/repos/create":
                    d = json.loads(raw)
                    rid = f"{d['organization']}/{d['name']}" if d.get("organization") else d["name"]
                    hub.repos[rid] = d
                    return self._reply(200, {"url": f"{base}/{rid}", "name": rid})
                if self.path == "/api/validate-yaml":  # the Hub checks a README's metadata before a commit
                    import yaml

                    content = json.loads(raw)["content"]
                    hub.validated.append(content)
                    try:
                        meta = yaml.safe_load(content.split("---\n")[1]) if content.startswith("---\n") else None
                        assert isinstance(meta, dict), "no YAML metadata block"
                    except Exception as e:  # noqa: BLE001
                        return self._reply(400, {"errors": [{"message": f"invalid YAML metadata: {e}"}]})
                    return self._reply(200, {"warnings": []})
                m = re.fullmatch(r"/api/models/(.+)/preupload/(.+)", self.path)
                if m:
                    files = json.loads(raw)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                       for f in files]})
                m = re.fullmatch(r"/api/models/(.+)/commit/(.+)", self.path)
                if m:
                    rid = m.group(1)
                    for line in raw.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            v = item["value"]
                            hub.files.setdefault(rid, {})[v["path"]] = base64.b64decode(v["content"])
                    return self._reply(200, {"commitUrl": f"{base}/{rid}/commit/0123abcd", "commitOid": "0123abcd" * 5,
                                             "pullRequestUrl": None})
                return self._reply(404, {"error": f"fake hub: no route {self.path}"})

            def do_GET(self):
                hub.requests.append(("GET", self.path, self.headers.get("Authorization")))
                return self._reply(404, {"error": f"fake hub: no route {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
