import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Model cards, charts and `push_to_hub` against a real HTTP server on loopback that speaks the Hub upload API
# (tests/loopback_hub.py). Over ~450 lines on purpose: the tests share module-scoped checkpoints and the Hub fixture.

import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import secrets  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402
from conftest import make_tokenizer, tiny_model  # noqa: E402
from loopback_hub import ALLOWED_RELATIONS, LoopbackHub, free_port  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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

    from optimum_rku.hub.card import build_model_card

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
    assert "| this model (pruned + LoRA recovery, merged) |" in loaded.text  # its weights are the recovered ones
    assert 'from_pretrained("me/tiny-rku", trust_remote_code=True)' in loaded.text
    assert "--model someone/base-model" in loaded.text and "--dataset openai/gsm8k" in loaded.text
    recover = loaded.text[loaded.text.index("optimum-cli rku recover") :]
    assert "--output tiny-rku \\" in recover or "--output tiny-rku\n" in recover  # the repo is the recovered model
    assert loaded.text.index("optimum-cli rku prune") < loaded.text.index("optimum-cli rku recover")


def test_recorded_eval_results_refresh_a_generated_card_and_keep_a_hand_edited_one(checkpoints, tmp_path):
    """`record_eval_results` (what `eval` and the recovery benchmark leave in a checkpoint) writes eval_results.json
    and regenerates the card only where optimum-rku wrote it."""
    import shutil

    from optimum_rku.hub.card import record_eval_results

    path = Path(shutil.copytree(checkpoints["uniform"], tmp_path / "ckpt"))
    record = gsm8k_result(0.25, 0.5).to_dict()
    assert record_eval_results(path, record) is True
    assert json.loads((path / "eval_results.json").read_text()) == json.loads(json.dumps(record))
    assert (
        "| this model (pruned) | GSM8K, 4 problems | test | 5 | 25.00% | 50.00% |" in (path / "README.md").read_text()
    )
    (path / "README.md").write_text("# my own card\n")
    assert record_eval_results(path, gsm8k_result(0.75, 1.0).to_dict()) is False
    assert (path / "README.md").read_text() == "# my own card\n"  # hand edits are never overwritten
    assert json.loads((path / "eval_results.json").read_text())["exact_match_strict"] == 0.75


def test_card_says_when_the_source_weights_are_quantized(checkpoints):
    """A checkpoint pruned from a packaged (quantized GGUF) model says so in its card; another does not."""
    from optimum_rku.hub.card import build_model_card
    from optimum_rku.io.packaged import PACKAGED_MODELS

    meta = json.loads((checkpoints["global"] / "rku_config.json").read_text())
    packaged = PACKAGED_MODELS["qwen2.5-coder-0.5b"]
    for recorded in (packaged.file_name, packaged.name):
        card = build_model_card({**meta, "base_model": recorded})
        assert "**quantized weights**" in card.text and packaged.weights_note in card.text
        assert f"(https://huggingface.co/{packaged.release})" in card.text  # the release the weights quantize
        assert "--model qwen2.5-coder-0.5b" in card.text  # the reproduce line loads it by its packaged name
        assert card.data.base_model is None and ".gguf](https://huggingface.co" not in card.text  # a file, no Hub id
    assert "quantized weights" not in build_model_card({**meta, "base_model": "someone/base-model"}).text


def test_card_rejects_bad_inputs(checkpoints):
    from optimum_rku.hub.card import build_model_card, checkpoint_writers

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
    from optimum_rku.hub.upload import push_to_hub

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

    from optimum_rku.hub.upload import push_to_hub

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


def test_push_never_uploads_a_machine_path(checkpoints, online, tmp_path):
    """A checkpoint written before records were portable (absolute paths in rku_config.json) uploads a record with
    names only; the local file stays as it was."""
    import shutil

    from optimum_rku.hub.upload import push_to_hub

    path = Path(shutil.copytree(checkpoints["uniform"], tmp_path / "ckpt"))
    meta = json.loads((path / "rku_config.json").read_text())
    meta["base_model"] = "/home/someone/models/tiny-base"
    meta["calibration"] = {"dataset": "/home/someone/data/calib.jsonl", "num_samples": 4}
    (path / "rku_config.json").write_text(json.dumps(meta))
    with LoopbackHub() as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        push_to_hub(path, "me/portable", token="hf_x")
        files = hub.files("me/portable")
    uploaded = json.loads(files["rku_config.json"])
    assert uploaded["base_model"] == "tiny-base" and uploaded["calibration"]["dataset"] == "calib.jsonl"
    assert all("/home/someone" not in content.decode("latin-1") for content in files.values())
    assert json.loads((path / "rku_config.json").read_text())["base_model"] == "/home/someone/models/tiny-base"


def test_push_keeps_hand_edited_card(checkpoints, online, tmp_path):
    import shutil

    from optimum_rku.hub.upload import push_to_hub

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
    from optimum_rku.hub.upload import HubAuthenticationError, push_to_hub

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
    from optimum_rku.hub.upload import HubPushError, push_to_hub

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

    from optimum_rku.hub.upload import HubPushError, push_to_hub

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
    from optimum_rku.hub.upload import push_to_hub

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

    from optimum_rku.hub.upload import push_to_hub

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
    from optimum_rku.hub.upload import push_to_hub

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
    assert (
        all("/" not in name for name in merged)
        and merged["model.safetensors"] == (path / "model.safetensors").read_bytes()
    )
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
    from optimum_rku.hub.upload import push_to_hub

    with LoopbackHub() as hub:
        online.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(ValueError, match="adapter_repo_id must differ from repo_id"):
            push_to_hub(recovered["dir"], "me/same", adapter_repo_id="me/same")
        with pytest.raises(ValueError, match="carries no adapter checkpoint"):
            push_to_hub(checkpoints["uniform"], "me/x", adapter_repo_id="me/x-lora")
        with pytest.raises(ValueError, match="repo id"):
            push_to_hub(recovered["dir"], "me/x", adapter_repo_id="not a repo")
        assert hub.requests == []


def test_recovered_card_reproduces_the_recovery_with_real_flags():
    """A recovered checkpoint's card gives the `recover` line after the `prune` line: non-default settings only, the
    dense model's own answers as `--answers self`, data given in Python as a placeholder; every flag it writes is one
    `optimum-rku recover` accepts, with the recorded values."""
    from optimum_rku.cli.registry import build_parser
    from optimum_rku.hub.reproduce import recover_command

    recovery = {
        "steps": 17,
        "learning_rate": 5e-4,
        "rank": 16,
        "alpha": 32,
        "per_device_batch_size": 8,
        "seed": 2016,
        "merged": True,
        "data": {
            "dataset": "the dense model's own answers (greedy, up to 768 new tokens; 134 of 136 questions, finished "
            "answers only)",
            "num_examples": 134,
            "max_length": 1024,
        },
    }
    line = recover_command(recovery, "m-rku-30", "m-rku-30-self")
    argv = line.replace("\\\n", " ").split()[2:]
    args = build_parser().parse_args(argv)
    assert (args.command, args.checkpoint, args.output, args.max_steps) == ("recover", "m-rku-30", "m-rku-30-self", 17)
    assert (args.learning_rate, args.max_length, args.answers, args.answer_tokens, args.num_samples) == (
        5e-4, 1024, "self", 768, 136,
    )  # fmt: skip
    assert "--lora-r" not in line and "--batch-size" not in line and "--seed" not in line  # defaults left out
    prompts = dict(recovery, data={"dataset": recovery["data"]["dataset"].replace("questions", "prompts")})
    assert "--data-files <the-questions.jsonl>" in recover_command(prompts, "a", "b")
    given = dict(recovery, merged=False, data={"dataset": "openai/gsm8k", "num_examples": 400})
    given["distillation"] = {"teacher": "dense", "alpha": 0.25, "temperature": 1.0}
    args = build_parser().parse_args(recover_command(given, "a", "b").replace("\\\n", " ").split()[2:])
    assert (args.answers, args.num_samples, args.dataset, args.teacher, args.distillation_alpha) == (
        "given", 400, None, "base", 0.25,
    )  # fmt: skip
    assert args.no_merge and args.distillation_temperature == 1.0
    other = recover_command(dict(recovery, data={"dataset": "someone/math-qa"}), "a", "b")
    assert "--dataset someone/math-qa" in other
    assert "--data-files <your-data.jsonl>" in recover_command(
        dict(recovery, data={"dataset": "in-memory list"}), "a", "b"
    )
    # a testbed checkpoint: `recover` reads the testbed's own pairs by default, so GSM8K must be named and its own not
    from optimum_rku.data.providers import METADATA_KEY, get_provider

    meta = {METADATA_KEY: "testbed"}
    own = get_provider("testbed").recovery_label
    line = recover_command(dict(recovery, data={"dataset": own, "num_examples": 50}), "a", "b", meta)
    assert "--dataset" not in line and "--data-files" not in line and "--num-samples 50" in line
    assert "--dataset openai/gsm8k" in recover_command(dict(given, data={"dataset": "openai/gsm8k"}), "a", "b", meta)


def test_reproduce_section_says_when_the_recovery_answers_were_sampled():
    """`recover --answers self` generates greedy answers: a card whose recovery learned sampled ones says so."""
    from optimum_rku.hub.reproduce import reproduce_section

    meta = {
        "pruning_config": {"sparsity": 0.3, "importance": "rku"},
        "plan": {},
        "base_model": "Qwen/Qwen2.5-0.5B-Instruct",
    }
    answers = "the dense model's own answers ({}, up to 256 new tokens; 30 of 32 questions, finished answers only)"
    for how, said in (("sampled", True), ("greedy", False)):
        section = reproduce_section(meta, {"steps": 5, "data": {"dataset": answers.format(how)}}, None)
        assert "--answers self" in section and ("*sampled* answers" in section) is said
