"""A minimal Hugging Face Hub on 127.0.0.1 that speaks the upload and download API, for tests."""

import base64
import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

ALLOWED_RELATIONS = ("adapter", "merge", "quantized", "finetune")


class LoopbackHub:
    """Minimal Hub on 127.0.0.1 (ephemeral port) serving what `create_repo` + `upload_folder` call.

    Endpoints: POST /api/repos/create, GET /api/models/{repo}, POST .../preupload/{rev} (answers "regular" so file
    contents arrive base64-encoded in the commit), POST .../commit/{rev} (NDJSON), POST/GET .../discussions (pull
    requests), POST /api/validate-yaml, and downloads: HEAD/GET /{repo}/resolve/{rev}/{path} (a branch or a commit
    id; ETag, X-Repo-Commit, 404 with X-Error-Code EntryNotFound). `mode="unauthorized"` answers 401 to everything.
    The server stops by itself after `lifetime_s` seconds or `max_requests` requests, whichever comes first.
    """

    def __init__(self, mode: str = "ok", max_requests: int = 100, lifetime_s: float = 120.0):
        self.mode = mode
        self.max_requests = max_requests
        self.lifetime_s = lifetime_s
        self.requests: list[dict] = []
        self.unexpected: list[str] = []
        self.repos: dict[str, dict] = {}
        self.lock = threading.Lock()

    # -- lifecycle
    def __enter__(self) -> "LoopbackHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                hub._handle(self, "GET")

            def do_POST(self):
                hub._handle(self, "POST")

            def do_PUT(self):
                hub._handle(self, "PUT")

            def do_HEAD(self):
                hub._handle(self, "HEAD")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.timer = threading.Timer(self.lifetime_s, self.server.shutdown)
        self.timer.daemon = True
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    # -- helpers for tests
    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return dict(self.repos[repo_id]["refs"].get(revision, {}))

    def auth_headers(self) -> set[str]:
        """Authorization headers of the Hub API calls (huggingface_hub's anonymous telemetry lookup excluded)."""
        return {r["headers"].get("authorization", "") for r in self.requests if r["path"] != "/api/agent-harnesses"}

    # -- request handling
    def _read_body(self, handler) -> bytes:
        if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            for _ in range(100_000):  # bounded chunk loop
                size = int(handler.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    handler.rfile.readline()
                    break
                chunks.append(handler.rfile.read(size))
                handler.rfile.readline()
            return b"".join(chunks)
        return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))

    def _reply(self, handler, status: int, payload, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(body)
        handler.close_connection = True

    def _handle(self, handler, method: str) -> None:
        parts = urlsplit(handler.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        body = self._read_body(handler)
        with self.lock:
            self.requests.append(
                {
                    "method": method,
                    "path": path,
                    "query": query,
                    "headers": {k.lower(): v for k, v in handler.headers.items()},
                }
            )
            count = len(self.requests)
        if count > self.max_requests:
            threading.Thread(target=self.server.shutdown, daemon=True).start()
            return self._reply(handler, 503, {"error": "loopback hub: request budget exhausted"})
        if self.mode == "unauthorized":
            return self._reply(handler, 401, {"error": "Invalid credentials in Authorization header"})
        try:
            return self._route(handler, method, path, query, body)
        except Exception as err:  # surface server bugs as 500 with the reason, and to the test
            self.unexpected.append(f"{method} {path}: {type(err).__name__}: {err}")
            return self._reply(handler, 500, {"error": str(err)})

    def _route(self, handler, method, path, query, body):
        if method == "POST" and path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = (
                f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            )
            with self.lock:
                if repo_id in self.repos:
                    return self._reply(
                        handler, 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
                    )
                private = payload.get("visibility") == "private" or bool(payload.get("private"))
                self.repos[repo_id] = {
                    "private": private,
                    "refs": {"main": {}},
                    "commits": [],
                    "snapshots": {},
                    "prs": {},
                }
            return self._reply(handler, 200, {"url": f"{self.url}/{repo_id}", "name": repo_id})
        if method == "GET" and path == "/api/agent-harnesses":  # huggingface_hub's best-effort telemetry lookup
            return self._reply(handler, 404, {"error": "not served by the loopback hub"})
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(handler, json.loads(body))
        parts = path.strip("/").split("/")
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            return self._download(handler, method, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        if not path.startswith("/api/models/"):
            self.unexpected.append(f"{method} {path}")
            return self._reply(handler, 404, {"error": "not found"})
        rest = path[len("/api/models/") :]
        for op in ("/preupload/", "/commit/"):
            if op in rest:
                repo_id, revision = rest.split(op, 1)
                if repo_id not in self.repos:
                    return self._reply(handler, 404, {"error": "Repository not found"})
                if op == "/preupload/":
                    files = json.loads(body)["files"]
                    modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                    return self._reply(handler, 200, {"files": modes})
                return self._commit(handler, repo_id, revision, query, body)
        if "/discussions" in rest:
            repo_id, _, num = rest.partition("/discussions")
            repo = self.repos[repo_id]
            if method == "POST" and not num:
                payload = json.loads(body)
                number = len(repo["prs"]) + 1
                repo["prs"][number] = {"title": payload["title"], "pull_request": payload["pullRequest"]}
                repo["refs"][f"refs/pr/{number}"] = dict(repo["refs"]["main"])
                return self._reply(handler, 200, {"num": number, "url": f"{self.url}/{repo_id}/discussions/{number}"})
            number = int(num.strip("/"))
            return self._reply(handler, 200, self._discussion(repo_id, number))
        if method == "GET" and ("/tree/" in rest or "/revision/" in rest):
            return self._listing(handler, rest)
        if method == "GET" and rest in self.repos:
            repo = self.repos[rest]
            files = sorted(repo["refs"]["main"])
            sha = repo["commits"][-1] if repo["commits"] else "0" * 40
            return self._reply(
                handler,
                200,
                {"id": rest, "sha": sha, "private": repo["private"], "siblings": [{"rfilename": f} for f in files]},
            )
        self.unexpected.append(f"{method} {path}")
        return self._reply(handler, 404, {"error": "not found"})

    def _download(self, handler, method: str, repo_id: str, revision: str, name: str) -> None:
        repo = self.repos.get(repo_id)
        files = None
        if repo is not None:
            files = repo["refs"].get(revision) or repo["snapshots"].get(revision)
        if files is None or name not in files:
            body = json.dumps({"error": "Entry not found"}).encode()
            handler.send_response(404)
            handler.send_header("X-Error-Code", "EntryNotFound" if files is not None else "RepoNotFound")
            handler.send_header("Content-Type", "application/json")
        else:
            body = files[name]
            commit = next((oid for oid in reversed(repo["commits"]) if repo["snapshots"][oid] is files), revision)
            handler.send_response(200)
            handler.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
            handler.send_header("X-Repo-Commit", commit)
            handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        if method == "GET":
            handler.wfile.write(body)
        handler.close_connection = True

    def _listing(self, handler, rest: str) -> None:
        """GET /api/models/{repo}/revision/{rev} (model info) and /api/models/{repo}/tree/{rev}[/{folder}]."""
        op = "/tree/" if "/tree/" in rest else "/revision/"
        repo_id, tail = rest.split(op, 1)
        revision, _, folder = tail.partition("/")
        repo = self.repos.get(repo_id)
        files = None if repo is None else (repo["refs"].get(revision) or repo["snapshots"].get(revision))
        if files is None:
            return self._reply(handler, 404, {"error": "Revision not found"})
        sha = repo["commits"][-1] if repo["commits"] else "0" * 40
        if op == "/revision/":
            siblings = [{"rfilename": name} for name in sorted(files)]
            info = {"id": repo_id, "sha": sha, "private": repo["private"], "siblings": siblings}
            return self._reply(handler, 200, info)
        prefix = f"{folder.strip('/')}/" if folder else ""
        entries, folders = [], set()
        for name in sorted(files):
            if not name.startswith(prefix):
                continue
            head, sep, _ = name[len(prefix) :].partition("/")
            if sep:
                folders.add(prefix + head)
            else:
                oid = hashlib.sha1(files[name]).hexdigest()
                entries.append({"type": "file", "path": name, "size": len(files[name]), "oid": oid})
        if prefix and not entries and not folders:
            handler_headers = {"X-Error-Code": "EntryNotFound"}
            return self._reply(handler, 404, {"error": f"{folder} does not exist"}, handler_headers)
        entries += [{"type": "directory", "path": name, "oid": "0" * 40} for name in sorted(folders)]
        return self._reply(handler, 200, entries)

    def _discussion(self, repo_id: str, number: int) -> dict:
        pr = self.repos[repo_id]["prs"][number]
        return {
            "title": pr["title"],
            "num": number,
            "author": {"name": "loopback"},
            "createdAt": "2026-01-01T00:00:00.000Z",
            "status": "draft",
            "repo": {"name": repo_id, "type": "model"},
            "isPullRequest": pr["pull_request"],
            "events": [],
            "changes": {"base": "refs/heads/main"},
            "filesWithConflicts": [],
            "diff": "",
        }

    def _commit(self, handler, repo_id, revision, query, body):
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            return self._reply(handler, 400, {"error": "commit payload must start with a header line"})
        repo = self.repos[repo_id]
        if revision not in repo["refs"]:
            return self._reply(handler, 400, {"error": f"unknown revision {revision}"})
        files = dict(repo["refs"][revision])
        for line in lines[1:]:
            if line["key"] == "file":
                value = line["value"]
                if value.get("encoding") != "base64":
                    return self._reply(handler, 400, {"error": "only base64 files are accepted"})
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] in ("deletedFile", "deletedFolder"):
                files.pop(line["value"]["path"], None)
            else:  # lfsFile: never requested since preupload answers "regular"
                return self._reply(handler, 400, {"error": f"unexpected commit operation {line['key']}"})
        oid = hashlib.sha1(json.dumps(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items())).encode())
        oid = oid.hexdigest()
        repo["refs"][revision] = files
        repo["commits"].append(oid)
        repo["snapshots"][oid] = files
        pr_url = None
        if revision.startswith("refs/pr/"):
            pr_url = f"{self.url}/{repo_id}/discussions/{revision.rsplit('/', 1)[1]}"
        return self._reply(
            handler,
            200,
            {
                "success": True,
                "commitOid": oid,
                "commitUrl": f"{self.url}/{repo_id}/commit/{oid}",
                "pullRequestUrl": pr_url,
            },
        )

    def _validate_yaml(self, handler, payload):
        text = payload["content"]
        errors = []
        if not text.startswith("---"):
            errors.append({"message": "missing YAML front matter"})
        else:
            meta = yaml.safe_load(text.split("---", 2)[1]) or {}
            relation = meta.get("base_model_relation")
            if relation is not None and relation not in ALLOWED_RELATIONS:
                errors.append({"message": f"base_model_relation must be one of {ALLOWED_RELATIONS}"})
        return self._reply(handler, 400 if errors else 200, {"errors": errors, "warnings": []})


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
