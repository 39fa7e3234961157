import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Model cards, charts and `push_to_hub` against a real HTTP server on loopback that speaks the Hub upload API.

import base64  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import secrets  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import parse_qs, unquote, urlsplit  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402
from conftest import make_tokenizer, tiny_model  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALLOWED_RELATIONS = ("adapter", "merge", "quantized", "finetune")


# ------------------------------------------------------------------------------------------------ loopback Hub
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


def front_matter(text: str) -> dict:
    assert text.startswith("---"), text[:80]
    return yaml.safe_load(text.split("---", 2)[1])


def tree_digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def assert_token_absent(token: str, *places) -> None:
    needle = token.encode()
    for place in places:
        if isinstance(place, Path):
            for file in place.rglob("*"):
                if file.is_file():
                    assert needle not in file.read_bytes(), f"token found in {file}"
        else:
            assert token not in place


# ------------------------------------------------------------------------------------------------ fixtures
def _pruned(allocation: str, protected_layers: list[int], targets: str = "both"):
    from optimum_rku import RKUConfig, RKUPruner

    pruner = RKUPruner.from_pretrained(tiny_model("llama"), tokenizer=make_tokenizer())
    config = RKUConfig(
        sparsity=0.3, importance="magnitude", allocation=allocation, protected_layers=protected_layers, targets=targets
    )
    pruner.prune(config, progress=False)
    return pruner


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    hetero = _pruned("global", [0])
    uniform = _pruned("uniform", [], targets="mlp")
    return {
        "global": hetero.save_pretrained(root / "global"),
        "uniform": uniform.save_pretrained(root / "uniform"),
        "pruner": hetero,
    }


@pytest.fixture
def online(monkeypatch):
    """Let huggingface_hub make HTTP requests (tests run with HF_HUB_OFFLINE=1) and never read a stored token."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", "/nonexistent/optimum-rku-test/token")
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", "/nonexistent/optimum-rku-test/stored_tokens")
    return monkeypatch


def gsm8k_result(strict: float, flexible: float, n: int = 4):
    from optimum_rku.evaluation import GSM8KResult

    return GSM8KResult(
        exact_match_strict=strict,
        exact_match_flexible=flexible,
        num_samples=n,
        num_fewshot=5,
        split="test",
        dataset="openai/gsm8k (main, test)",
        total_time_s=1.0,
        generated_tokens=10,
        tokens_per_s=10.0,
    )


# ------------------------------------------------------------------------------------------------ cards and charts
def test_checkpoint_gets_card_and_chart(checkpoints):
    from huggingface_hub import ModelCard

    for kind, remote in (("global", True), ("uniform", False)):
        path = checkpoints[kind]
        meta = json.loads((path / "rku_config.json").read_text())
        assert (path / "modeling_rku.py").is_file() is remote
        assert (path / "rku_allocation.png").read_bytes().startswith(PNG_SIGNATURE)
        card = ModelCard.load(path / "README.md")
        data = card.data.to_dict()
        assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
        assert {"optimum-rku", "pruned", "structured-pruning"} <= set(data["tags"])
        assert ("custom_code" in data["tags"]) is remote
        assert "lora" not in data["tags"] and "base_model_relation" not in data  # pruned only, no Hub id base
        assert data["optimum_rku"]["achieved_sparsity"] == pytest.approx(
            meta["parameters"]["achieved_sparsity"], abs=1e-6
        )
        assert data["optimum_rku"]["parameters_after"] == meta["parameters"]["total_after"]
        assert ("trust_remote_code=True" in card.text) is remote
        assert "RKUModelForCausalLM.from_pretrained" in card.text and "rku_allocation.png" in card.text
        for layer, dense in zip(meta["plan"]["layers"], meta["dense_widths"]):
            assert f"| {layer['layer']} | {layer['intermediate_size']} / {dense['intermediate_size']} " in card.text
        assert "optimum-cli rku prune" in card.text and "--importance magnitude" in card.text
        assert ("--protected-layers 0" in card.text) is remote
        assert ModelCard(str(card)).data.to_dict() == data  # stable round trip


def test_card_metadata_with_results_and_recovery(checkpoints, tmp_path):
    from huggingface_hub import ModelCard

    from optimum_rku.io.card import build_model_card

    meta = json.loads((checkpoints["global"] / "rku_config.json").read_text())
    meta["base_model"] = "someone/base-model"
    meta["calibration"] = {"dataset": "openai/gsm8k", "config": "main", "split": "train", "num_samples": 8}
    recovery = {"method": "lora", "r": 8, "dataset": "someone/recovery-set", "max_steps": 20}
    pruned, dense = gsm8k_result(0.25, 0.5), gsm8k_result(0.75, 1.0).to_dict()
    card = build_model_card(meta, pruned, dense, recovery=recovery, repo_id="me/tiny-rku")
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    data = loaded.data
    assert data.base_model == "someone/base-model" and data.base_model_relation in ALLOWED_RELATIONS
    assert data.base_model_relation == "finetune" and "lora" in data.tags
    assert data.datasets == ["openai/gsm8k", "someone/recovery-set"]
    assert data.model_name == "tiny-rku"
    values = {r.metric_name: r.metric_value for r in data.eval_results}
    assert values["exact match, strict-match (%)"] == pytest.approx(25.0)
    assert values["exact match, flexible-extract (%)"] == pytest.approx(50.0)
    assert values["exact match, strict-match (%) (dense base model)"] == pytest.approx(75.0)
    assert values["exact match, flexible-extract (%) (dense base model)"] == pytest.approx(100.0)
    first = data.eval_results[0]
    assert (first.dataset_type, first.dataset_split, first.dataset_args) == (
        "openai/gsm8k",
        "test",
        {"num_few_shot": 5, "num_problems": 4},
    )
    assert "## Recovery" in loaded.text and "someone/recovery-set" in loaded.text
    assert 'from_pretrained("me/tiny-rku", trust_remote_code=True)' in loaded.text
    assert "--model someone/base-model" in loaded.text and "--dataset openai/gsm8k" in loaded.text


def test_card_rejects_bad_inputs(checkpoints):
    from optimum_rku.io.card import build_model_card, checkpoint_writers

    meta = json.loads((checkpoints["uniform"] / "rku_config.json").read_text())
    with pytest.raises(TypeError, match="rku_config.json"):
        build_model_card([meta])
    with pytest.raises(ValueError, match="plan"):
        checkpoint_writers({k: v for k, v in meta.items() if k != "plan"})
    with pytest.raises(ValueError, match="exact_match_flexible"):
        build_model_card(meta, {"exact_match_strict": 0.1, "num_samples": 1, "num_fewshot": 0, "split": "test"})
    with pytest.raises(TypeError, match="eval_results"):
        build_model_card(meta, 0.5)
    with pytest.raises(ValueError, match="repo id"):
        build_model_card(meta, repo_id="not a repo")


# ------------------------------------------------------------------------------------------------ push_to_hub
def test_push_uploads_checkpoint_with_results(checkpoints, online, caplog, capsys):
    from optimum_rku.io.hub import push_to_hub

    caplog.set_level(logging.DEBUG)
    token = "hf_" + secrets.token_hex(16)
    path = checkpoints["global"]
    before = tree_digest(path)
    meta = json.loads((path / "rku_config.json").read_text())
    with LoopbackHub() as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        url = push_to_hub(path, "me/tiny-rku", token=token, private=True, eval_results=gsm8k_result(0.5, 0.75))
        files = hub.files("me/tiny-rku")
        assert url.startswith(f"{hub.url}/me/tiny-rku/commit/")
        assert hub.repos["me/tiny-rku"]["private"] is True
        assert hub.auth_headers() == {f"Bearer {token}"}  # the token was used, and only in the header
        assert not hub.unexpected
    expected = {
        "README.md",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "modeling_rku.py",
        "rku_allocation.png",
        "rku_config.json",
        "eval_results.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert set(files) == expected
    for name in expected - {"README.md", "eval_results.json"}:
        assert files[name] == (path / name).read_bytes(), name
    card = files["README.md"].decode()
    data = front_matter(card)
    assert data["optimum_rku"]["achieved_sparsity"] == pytest.approx(meta["parameters"]["achieved_sparsity"], abs=1e-6)
    assert data["optimum_rku"]["target_sparsity"] == meta["pruning_config"]["sparsity"]
    metrics = {m["name"]: m["value"] for m in data["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"exact match, strict-match (%)": 50.0, "exact match, flexible-extract (%)": 75.0}
    assert json.loads(files["eval_results.json"])["exact_match_strict"] == 0.5
    assert 'from_pretrained("me/tiny-rku", trust_remote_code=True)' in card
    assert tree_digest(path) == before  # nothing local changed
    out, err = capsys.readouterr()
    assert_token_absent(token, path, out, err, caplog.text, *(v.decode("latin-1") for v in files.values()))


def test_push_defaults_to_checkpoint_eval_results_and_pr(checkpoints, online, tmp_path):
    import shutil

    from optimum_rku.io.hub import push_to_hub

    path = Path(shutil.copytree(checkpoints["uniform"], tmp_path / "ckpt"))
    (path / "eval_results.json").write_text(json.dumps(gsm8k_result(0.25, 0.5).to_dict()))
    (path / "notes.txt").write_text("local scratch file, not part of the checkpoint")
    with LoopbackHub() as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        push_to_hub(path, "me/uniform", token="hf_first")
        url = push_to_hub(path, "me/uniform", token="hf_second", create_pr=True, commit_message="Try a PR")
        assert url == f"{hub.url}/me/uniform/discussions/1"
        pr_files, main_files = hub.files("me/uniform", "refs/pr/1"), hub.files("me/uniform")
        assert hub.repos["me/uniform"]["prs"][1]["title"] == "Try a PR"
        assert not hub.unexpected
    assert "notes.txt" not in main_files and "modeling_rku.py" not in main_files
    assert set(pr_files) == set(main_files)
    metrics = front_matter(main_files["README.md"].decode())["model-index"][0]["results"][0]["metrics"]
    assert [m["value"] for m in metrics] == [25.0, 50.0]
    assert "trust_remote_code" not in main_files["README.md"].decode()


def test_push_keeps_hand_edited_card(checkpoints, online, tmp_path):
    import shutil

    from optimum_rku.io.hub import push_to_hub

    path = Path(shutil.copytree(checkpoints["uniform"], tmp_path / "ckpt"))
    generated = (path / "README.md").read_text()
    edited = "\n".join(line for line in generated.splitlines() if "generated by optimum-rku" not in line)
    (path / "README.md").write_text(edited + "\nHand-written notes.\n")
    with LoopbackHub() as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        push_to_hub(path, "me/edited", token="hf_x", eval_results=gsm8k_result(0.5, 0.5))
        files = hub.files("me/edited")
    assert files["README.md"].decode() == edited + "\nHand-written notes.\n"
    assert "eval_results.json" in files


def test_push_auth_failure_is_one_clear_line(checkpoints, online):
    from optimum_rku.io.hub import HubAuthenticationError, push_to_hub

    path = checkpoints["uniform"]
    before = tree_digest(path)
    token = "hf_" + secrets.token_hex(16)
    with LoopbackHub(mode="unauthorized") as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(HubAuthenticationError) as info:
            push_to_hub(path, "me/denied", token=token)
        assert len(hub.requests) <= 3
    message = str(info.value)
    assert isinstance(info.value, PermissionError) and "\n" not in message
    assert "401" in message and "me/denied" in message and token not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert tree_digest(path) == before


def test_push_connection_refused_is_one_clear_line(checkpoints, online):
    from optimum_rku.io.hub import HubPushError, push_to_hub

    path = checkpoints["uniform"]
    before = tree_digest(path)
    endpoint = f"http://127.0.0.1:{free_port()}"
    online.setenv("HF_ENDPOINT", endpoint)
    start = time.perf_counter()
    with pytest.raises(HubPushError) as info:
        push_to_hub(path, "me/offline", token="hf_x")
    assert time.perf_counter() - start < 30
    message = str(info.value)
    assert isinstance(info.value, RuntimeError) and "\n" not in message
    assert "Could not reach" in message and endpoint in message
    assert tree_digest(path) == before


def test_push_validates_before_network(checkpoints, online, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from optimum_rku.io.hub import HubPushError, push_to_hub

    with LoopbackHub() as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(ValueError, match="repo id"):
            push_to_hub(checkpoints["uniform"], "bad repo id!")
        with pytest.raises(FileNotFoundError, match="not a directory"):
            push_to_hub(tmp_path / "missing", "me/x")
        with pytest.raises(ValueError, match="rku_config.json"):
            push_to_hub(tmp_path, "me/x")
        with pytest.raises(TypeError, match="eval_results"):
            push_to_hub(checkpoints["uniform"], "me/x", eval_results=[0.5])
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(HubPushError, match="HF_HUB_OFFLINE"):
            push_to_hub(checkpoints["uniform"], "me/x")
        assert hub.requests == []


def test_pruner_push_to_hub(checkpoints, online):
    pruner = checkpoints["pruner"]
    with LoopbackHub() as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        url = pruner.push_to_hub("me/from-pruner", token="hf_abc", eval_results=gsm8k_result(0.5, 0.5).to_dict())
        files = hub.files("me/from-pruner")
    assert url.startswith(f"{hub.url}/me/from-pruner/commit/")
    assert {"model.safetensors", "modeling_rku.py", "README.md", "rku_allocation.png", "rku_config.json"} <= set(files)
    assert json.loads(files["rku_config.json"])["plan"] == pruner.metadata()["plan"]
    with pytest.raises(ValueError, match="repo id"):
        pruner.push_to_hub("no spaces allowed")


# ------------------------------------------------------------------------------------------------ LoRA adapters
@pytest.fixture(scope="module")
def recovered(tmp_path_factory):
    """A global-pruned tiny Llama recovered with save_adapter=True: merged at the top, adapter checkpoint inside."""
    import torch

    root = tmp_path_factory.mktemp("adapter")
    pruner = _pruned("global", [0])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        merged = pruner.recover(
            [{"prompt": f"Q{i}: ab?", "response": " cd cd."} for i in range(8)],
            training_args={"max_steps": 3, "learning_rate": 1e-2, "per_device_train_batch_size": 4},
            save_dir=root / "rec",
            save_adapter=True,
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    return {"dir": root / "rec", "adapter_checkpoint": root / "rec" / "pruned_base", "merged": merged}


def merged_logits(model) -> list:
    import torch
    from conftest import sample_inputs

    with torch.no_grad():
        return model(sample_inputs()).logits.tolist()


def test_push_adapter_checkpoint_uploads_base_and_adapter(recovered, online):
    from optimum_rku.io.hub import push_to_hub

    path = recovered["adapter_checkpoint"]
    before = tree_digest(path)
    with LoopbackHub() as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        push_to_hub(path, "me/tiny-lora", token="hf_x")
        files = hub.files("me/tiny-lora")
        assert not hub.unexpected
    adapter_files = {name for name in files if name.startswith("adapter/")}
    assert adapter_files == {
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/tokenizer.json",
        "adapter/tokenizer_config.json",
    }
    assert {"config.json", "model.safetensors", "modeling_rku.py", "rku_config.json", "README.md"} <= set(files)
    for name in ("model.safetensors", "config.json", "adapter/adapter_model.safetensors", "adapter/tokenizer.json"):
        assert files[name] == (path / name).read_bytes(), name  # the pruned base and the adapter, unchanged
    uploaded = json.loads(files["adapter/adapter_config.json"])
    local = json.loads((path / "adapter" / "adapter_config.json").read_text())
    assert local["base_model_name_or_path"] == ".." and uploaded["base_model_name_or_path"] == "me/tiny-lora"
    assert {k: v for k, v in uploaded.items() if k != "base_model_name_or_path"} == {
        k: v for k, v in local.items() if k != "base_model_name_or_path"
    }
    card = files["README.md"].decode()
    data = front_matter(card)
    assert {"lora", "peft"} <= set(data["tags"]) and "base_model_relation" not in data
    assert 'PeftModel.from_pretrained(base, "me/tiny-lora", subfolder="adapter")' in card
    assert tree_digest(path) == before  # the local config still says '..'


SNIPPET_RUNNER = """
import json, sys, torch
from conftest import sample_inputs
{snippet}
from optimum_rku import load_adapter_model
second = load_adapter_model("{repo}").eval()
model.eval()
with torch.no_grad():
    print(json.dumps({{"card": model(sample_inputs()).logits.tolist(), "load_adapter_model":
        second(sample_inputs()).logits.tolist(), "vocab": len(tokenizer)}}))
"""


def test_card_snippet_loads_the_pushed_adapter(recovered, online, tmp_path):
    """The card's PEFT snippet, run as written against the (loopback) Hub, gives the recovered model."""
    import re
    import subprocess
    import sys

    from optimum_rku.io.hub import push_to_hub

    with LoopbackHub(max_requests=600, lifetime_s=280) as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        push_to_hub(recovered["adapter_checkpoint"], "me/tiny-lora", token="hf_x")
        card = hub.files("me/tiny-lora")["README.md"].decode()
        section = card.split("## Use the LoRA adapter (PEFT)", 1)[1].split("\n## ", 1)[0]
        snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
        script = tmp_path / "snippet.py"
        script.write_text(SNIPPET_RUNNER.format(snippet=snippet, repo="me/tiny-lora"))
        tests_dir = Path(__file__).resolve().parent
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.url,
            "HF_HUB_OFFLINE": "0",
            "HF_HOME": str(tmp_path / "hf"),
            "HF_MODULES_CACHE": str(tmp_path / "modules"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "PYTHONPATH": os.pathsep.join([str(tests_dir), str(tests_dir.parent), os.environ.get("PYTHONPATH", "")]),
        }
        env.pop("HF_TOKEN", None)
        proc = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert not hub.unexpected, hub.unexpected
        downloads = {  # file paths inside the repository (fetched at a branch or a commit id)
            r["path"].split("/resolve/", 1)[1].split("/", 1)[1]
            for r in hub.requests
            if r["method"] == "GET" and r["path"].startswith("/me/tiny-lora/resolve/")
        }
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    import torch

    expected = torch.tensor(merged_logits(recovered["merged"]))
    assert torch.allclose(torch.tensor(out["card"]), expected, atol=1e-5)
    assert torch.allclose(torch.tensor(out["load_adapter_model"]), expected, atol=1e-5)
    assert out["vocab"] == len(make_tokenizer())
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "model.safetensors"} <= downloads


def test_push_merged_checkpoint_with_its_adapter(recovered, online, caplog):
    from optimum_rku.io.hub import push_to_hub

    path = recovered["dir"]
    before = tree_digest(path)
    with LoopbackHub() as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        url = push_to_hub(path, "me/tiny", token="hf_x", adapter_repo_id="me/tiny-lora")
        merged, adapter = hub.files("me/tiny"), hub.files("me/tiny-lora")
        caplog.set_level(logging.WARNING)
        push_to_hub(path, "me/tiny-merged-only", token="hf_x")
        alone = hub.files("me/tiny-merged-only")
        assert not hub.unexpected
    assert url.startswith(f"{hub.url}/me/tiny/commit/")
    assert all("/" not in name for name in merged) and merged["model.safetensors"] == (
        path / "model.safetensors"
    ).read_bytes()
    assert adapter["model.safetensors"] == (path / "pruned_base" / "model.safetensors").read_bytes()
    assert json.loads(adapter["adapter/adapter_config.json"])["base_model_name_or_path"] == "me/tiny-lora"
    card = merged["README.md"].decode()
    assert "## LoRA adapter" in card and "[me/tiny-lora](https://huggingface.co/me/tiny-lora)" in card
    assert "pruned_base/" not in card  # the local folder is not what the Hub reader sees
    assert set(alone) == set(merged) and "## LoRA adapter" not in alone["README.md"].decode()
    assert "pruned_base/ (the pruned base with its LoRA adapter) is not uploaded" in caplog.text
    assert "--adapter-repo-id" in caplog.text
    assert tree_digest(path) == before


def test_adapter_push_validates_before_network(recovered, checkpoints, online):
    from optimum_rku.io.hub import push_to_hub

    with LoopbackHub() as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(ValueError, match="adapter_repo_id must differ from repo_id"):
            push_to_hub(recovered["dir"], "me/same", adapter_repo_id="me/same")
        with pytest.raises(ValueError, match="carries no adapter checkpoint"):
            push_to_hub(checkpoints["uniform"], "me/x", adapter_repo_id="me/x-lora")
        with pytest.raises(ValueError, match="repo id"):
            push_to_hub(recovered["dir"], "me/x", adapter_repo_id="not a repo")
        assert hub.requests == []
