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
    requests), POST /api/validate-yaml. `mode="unauthorized"` answers 401 to everything. The server stops by itself
    after `lifetime_s` seconds or `max_requests` requests, whichever comes first.
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

    def _reply(self, handler, status: int, payload) -> None:
        body = json.dumps(payload).encode()
        handler.send_response(status)
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
                self.repos[repo_id] = {"private": private, "refs": {"main": {}}, "commits": [], "prs": {}}
            return self._reply(handler, 200, {"url": f"{self.url}/{repo_id}", "name": repo_id})
        if method == "GET" and path == "/api/agent-harnesses":  # huggingface_hub's best-effort telemetry lookup
            return self._reply(handler, 404, {"error": "not served by the loopback hub"})
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(handler, json.loads(body))
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
