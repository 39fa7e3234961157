import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The command line end to end in subprocesses on a tiny random Llama saved to disk: prune -> eval -> push (to a
# loopback Hub) -> recover, plus benchmark, help without torch, optimum-cli registration and one-line errors.

import hashlib  # noqa: E402
import json  # noqa: E402
import secrets  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from conftest import make_tokenizer, tiny_model  # noqa: E402
from test_hub import LoopbackHub, free_port, front_matter  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SUBCOMMANDS = ("prune", "eval", "recover", "push", "import-gguf", "benchmark")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.pop("HF_TOKEN", None)
    env.update(extra or {})
    return env


def start(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """Start `python -m optimum_rku.cli ARGS` (the `optimum-rku` entry point) in a subprocess."""
    return subprocess.Popen(
        [sys.executable, "-m", "optimum_rku.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(env),
        cwd=cwd or REPO,
    )


def finish(process: subprocess.Popen, timeout: float = 240) -> subprocess.CompletedProcess:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return finish(start(*args, env=env), timeout)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{result.args}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}"
    return result


def one_line_error(result: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, (result.args, result.returncode, result.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in path.rglob("*") if p.is_file()
    }


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny random Llama + tokenizer saved to disk, calibration texts and GSM8K-format problems as jsonl."""
    root = tmp_path_factory.mktemp("cli")
    model = tiny_model("llama")
    model.save_pretrained(root / "base")
    make_tokenizer().save_pretrained(root / "base")
    problems = [
        {"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?", "answer": f"#### {a + b}"}
        for a, b in ((3, 4), (10, 5), (7, 8), (12, 9), (6, 6), (2, 11))
    ]
    write_jsonl(root / "calib.jsonl", [{"question": p["question"]} for p in problems])
    write_jsonl(root / "eval.jsonl", problems[:4])
    write_jsonl(root / "train.jsonl", problems)
    return root


# ------------------------------------------------------------------------------------------------ parsing
def test_help_does_not_import_torch():
    code = (
        "import sys, json\n"
        "from optimum_rku.cli import main\n"
        "for argv in (['--help'], ['prune', '--help'], ['eval', '--help'], ['push', '--help'], ['demo', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(json.dumps({m: m in sys.modules for m in ('torch', 'transformers', 'huggingface_hub')}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    ok(result)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == {"torch": False, "transformers": False, "huggingface_hub": False}
    for flag in (
        "--sparsity",
        "--importance",
        "--protected-layers",
        "--num-samples",
        "--data-files",
        "--max-new-tokens",
    ):
        assert flag in result.stdout
    for name in (*SUBCOMMANDS, "demo", "testbed"):
        assert name in result.stdout


def test_optimum_cli_lists_rku_subcommands(tmp_path):
    script = Path(sys.executable).with_name("optimum-cli")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "optimum.commands.optimum_cli"]
    result = ok(subprocess.run([*command, "rku", "--help"], capture_output=True, text=True, env=_env(), cwd=tmp_path))
    for name in SUBCOMMANDS:
        assert name in result.stdout
    prune = ok(subprocess.run([*command, "rku", "prune", "--help"], capture_output=True, text=True, env=_env()))
    assert "--sparsity" in prune.stdout and "--protected-layers" in prune.stdout
    bad = subprocess.run([*command, "rku", "prune", "--sparsity", "lots"], capture_output=True, text=True, env=_env())
    one_line_error(bad, 2, "--sparsity")
    run = [*command, "rku", "push", "--checkpoint", str(tmp_path), "--repo-id", "me/x"]  # runs, fails on input
    one_line_error(
        subprocess.run(run, capture_output=True, text=True, env=_env()), 2, "optimum-cli rku push", "rku_config.json"
    )


def test_config_flags_and_card_command_round_trip(tmp_path):
    import dataclasses

    from optimum_rku.cli import build_parser, config_from_args
    from optimum_rku.config import RKUConfig
    from optimum_rku.hub.reproduce import reproduce_command

    parser = build_parser()
    names = {action.dest for action in parser._subparsers._group_actions[0].choices["prune"]._actions}
    assert {f.name for f in dataclasses.fields(RKUConfig)} <= names  # every field has a flag
    args = parser.parse_args(
        "prune --output o --sparsity 0.25 --importance magnitude --protected-layers 0 2 --targets mlp "
        "--num-samples 7 --generation-do-sample --round-to 8".split()
    )
    config = config_from_args(args)
    assert (config.sparsity, config.importance, config.protected_layers, config.targets) == (
        0.25,
        "magnitude",
        [0, 2],
        "mlp",
    )
    assert (config.num_calibration_samples, config.generation_do_sample, config.round_to) == (7, True, 8)

    saved = RKUConfig(sparsity=0.5, allocation="uniform", seed=3).save_pretrained(tmp_path)
    args = parser.parse_args(["prune", "--output", "o", "--config", str(saved), "--sparsity", "0.1"])
    assert config_from_args(args) == RKUConfig(sparsity=0.1, allocation="uniform", seed=3)  # flags override

    meta = {"pruning_config": config.to_dict(), "is_testbed": False, "base_model": "org/base", "calibration": {}}
    line = reproduce_command(meta, "out").replace("\\\n", " ")
    assert line.startswith("optimum-cli rku prune ")
    reparsed = parser.parse_args(line.split()[2:])
    assert config_from_args(reparsed) == config and reparsed.model == "org/base"


def test_bad_arguments_exit_2_with_one_line(tmp_path, workspace):
    out = str(tmp_path / "out")
    runs = {
        "not a number": start("prune", "--output", out, "--sparsity", "abc"),
        "missing output": start("prune", "--sparsity", "0.3"),
        "out of range": start("prune", "--model", str(workspace / "base"), "--output", out, "--sparsity", "1.5"),
        "unknown method": start("prune", "--model", str(workspace / "base"), "--output", out, "--importance", "nope"),
        "missing model": start("eval", "--model", "./no-such-model-dir", "--limit", "1"),
        "not a checkpoint": start("push", "--checkpoint", str(workspace / "base"), "--repo-id", "me/x"),
        "bad limit": start("eval", "--limit", "0"),
        "debug": start("prune", "--output", out, "--sparsity", "1.5", "--debug"),
    }
    results = {name: finish(process) for name, process in runs.items()}
    one_line_error(results["not a number"], 2, "--sparsity", "'abc'")
    one_line_error(results["missing output"], 2, "--output")
    one_line_error(results["out of range"], 2, "sparsity=1.5", "allowed")
    one_line_error(results["unknown method"], 2, "'nope'", "magnitude")
    one_line_error(results["missing model"], 2, "no-such-model-dir")
    one_line_error(results["not a checkpoint"], 2, "rku_config.json")
    one_line_error(results["bad limit"], 2, "--limit")
    assert results["debug"].returncode != 0 and "Traceback" in results["debug"].stderr
    assert not (tmp_path / "out").exists()


def test_passthrough_commands_help():
    demo = ok(cli("demo", "--help"))
    assert "optimum-rku demo" in demo.stdout and "--sparsity" in demo.stdout
    testbed = ok(cli("testbed", "--help"))
    assert "train" in testbed.stdout
    one_line_error(cli("testbed", "fly"), 2, "'fly'")


# ------------------------------------------------------------------------------------------------ end to end
def test_prune_eval_push(workspace, tmp_path):
    base, out = workspace / "base", tmp_path / "pruned"
    pruned = ok(
        cli(
            *("prune", "--model", str(base), "--output", str(out), "--sparsity", "0.3", "--protected-layers", "0"),
            *("--data-files", str(workspace / "calib.jsonl"), "--num-samples", "4", "--calibration-seq-len", "32"),
            "--quiet",
        )
    )
    meta = json.loads((out / "rku_config.json").read_text())
    assert "parameters:" in pruned.stdout and f"saved to {out.resolve()}" in pruned.stdout
    assert f"{meta['parameters']['total_before']:,} -> {meta['parameters']['total_after']:,}" in pruned.stdout
    assert meta["pruning_config"]["sparsity"] == 0.3 and meta["pruning_config"]["protected_layers"] == [0]
    assert meta["calibration"]["num_samples"] == 4 and meta["calibration"]["dataset"].endswith("calib.jsonl")
    assert (out / "README.md").is_file() and (out / "rku_allocation.png").is_file()

    # eval on a local GSM8K-format file: table, per-sample jsonl, eval_results.json, card updated
    samples = tmp_path / "samples.jsonl"
    evaluated = ok(
        cli(
            *("eval", "--model", str(out), "--dataset", str(workspace / "eval.jsonl"), "--limit", "3"),
            *("--num-fewshot", "0", "--max-new-tokens", "6", "--batch-size", "3", "--output", str(samples), "--quiet"),
            "--stop-loops",
        )
    )
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    summary = json.loads((out / "eval_results.json").read_text())
    assert len(rows) == 3 and summary["num_samples"] == 3 and summary["max_new_tokens"] == 6
    assert summary["stop_loops"] and sum(summary["stopped"].values()) == 3 and all(r["stopped"] for r in rows)
    assert summary["exact_match_strict"] == sum(r["correct_strict"] for r in rows) / 3
    assert summary["exact_match_flexible"] == sum(r["correct_flexible"] for r in rows) / 3
    assert "| model | dataset | split | n | shots |" in evaluated.stdout
    assert f"{100 * summary['exact_match_strict']:.2f}%" in evaluated.stdout
    card = (out / "README.md").read_text()
    assert "## Evaluation" in card and "3 problems" in card

    # push to a loopback Hub: token from HF_TOKEN, never echoed or written
    token = "hf_" + secrets.token_hex(16)
    before = digest(out)
    with LoopbackHub() as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_TOKEN": token, "HF_HOME": str(tmp_path / "hf")}
        pushed = ok(cli("push", "--checkpoint", str(out), "--repo-id", "me/cli-tiny", "--private", env=env))
        files = hub.files("me/cli-tiny")
        assert hub.auth_headers() <= {f"Bearer {token}"} and f"Bearer {token}" in hub.auth_headers()
        assert hub.repos["me/cli-tiny"]["private"] is True and not hub.unexpected
    assert pushed.stdout.strip().startswith(f"pushed: {hub.url}/me/cli-tiny/commit/")
    assert {"README.md", "model.safetensors", "config.json", "rku_config.json", "rku_allocation.png"} <= set(files)
    assert ("modeling_rku.py" in files) == (out / "modeling_rku.py").is_file()
    data = front_matter(files["README.md"].decode())
    metrics = {m["name"]: m["value"] for m in data["model-index"][0]["results"][0]["metrics"]}
    assert metrics["exact match, strict-match (%)"] == round(100 * summary["exact_match_strict"], 2)
    assert metrics["exact match, flexible-extract (%)"] == round(100 * summary["exact_match_flexible"], 2)
    assert data["optimum_rku"]["achieved_sparsity"] == pytest.approx(meta["parameters"]["achieved_sparsity"], abs=1e-6)
    assert digest(out) == before
    for place in (
        pushed.stdout,
        pushed.stderr,
        *(p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file()),
    ):
        assert token not in place

    # failures: 401 and connection refused are one line, exit 1, checkpoint untouched (both run side by side)
    with LoopbackHub(mode="unauthorized") as hub:
        denied = start(
            *("push", "--checkpoint", str(out), "--repo-id", "me/denied", "--token", token),
            env={"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"},
        )
        refused = start(
            *("push", "--checkpoint", str(out), "--repo-id", "me/x"),
            env={"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HUB_OFFLINE": "0"},
        )
        denied, refused = finish(denied), finish(refused)
    assert token not in one_line_error(denied, 1, "401", "me/denied")
    one_line_error(refused, 1, "Could not reach")
    assert digest(out) == before


def test_recover_and_benchmark_commands(workspace, tmp_path, capsys):
    # in-process through main(): the same code path as the console script, without paying torch's import again
    from optimum_rku.cli import main

    out, recovered = tmp_path / "pruned", tmp_path / "recovered"
    assert (
        main(
            [
                "prune",
                "--model",
                str(workspace / "base"),
                "--output",
                str(out),
                "--importance",
                "magnitude",
                "--sparsity",
                "0.3",
                "--quiet",
            ]
        )
        == 0
    )
    meta = json.loads((out / "rku_config.json").read_text())
    assert meta["base_model"] == "base" and meta["base_model_fingerprint"].startswith("sha256:")
    assert str(workspace) not in (out / "rku_config.json").read_text()  # names only, never a machine path
    recover = [
        *("recover", "--checkpoint", str(out), "--output", str(recovered), "--max-steps", "2", "--lora-r", "4"),
        *("--data-files", str(workspace / "train.jsonl"), "--num-samples", "4", "--batch-size", "2"),
        *("--max-length", "160", "--teacher", "base", "--distillation-alpha", "0.25", "--quiet"),
    ]
    capsys.readouterr()
    assert main(recover) == 2  # a local base is recorded by name: only --base finds it
    assert "pass --base PATH" in capsys.readouterr().err and not recovered.exists()
    tiny_model("llama", num_hidden_layers=1).save_pretrained(tmp_path / "other")
    assert main([*recover, "--base", str(tmp_path / "other")]) == 2  # another model: its content hash differs
    assert "is not the model this checkpoint was pruned from" in capsys.readouterr().err
    code = main([*recover, "--base", str(workspace / "base")])
    assert code == 0
    recovery = json.loads((recovered / "rku_config.json").read_text())["recovery"]
    assert recovery["steps"] == 2 and recovery["rank"] == 4 and recovery["merged"] is True
    assert recovery["distillation"]["alpha"] == 0.25 and recovery["distillation"]["temperature"] == 1.0
    assert recovery["distillation"]["teacher"] == "dense"  # the base it was pruned from, named without its path
    assert str(workspace) not in json.dumps(recovery["distillation"])
    card = (recovered / "README.md").read_text()
    assert "| distillation | from the dense model it was pruned from: " in card
    assert "## Recovery" in card and "- lora" in card and "| LoRA rank / alpha / dropout | 4 / 8 / " in card
    assert "| distillation | from " in card and "alpha 0.25, T 1.0 |" in card
    assert f"saved to {recovered.resolve()}" in capsys.readouterr().out
    refused = [*("recover", "--checkpoint", str(out), "--output", str(tmp_path / "chat"), "--chat-template", "on")]
    assert main([*refused, "--data-files", str(workspace / "train.jsonl"), "--quiet"]) == 2  # no chat template
    assert "chat_template='on' but the tokenizer has no chat_template" in capsys.readouterr().err
    assert not (tmp_path / "chat").exists()

    code = main(
        [
            *("benchmark", "--model", str(workspace / "base"), "--methods", "magnitude", "random"),
            *("--sparsities", "0.2", "0.4", "--dataset", str(workspace / "eval.jsonl"), "--limit", "2"),
            *("--num-fewshot", "0", "--max-new-tokens", "4", "--output", str(tmp_path / "bench.json"), "--quiet"),
        ]
    )
    assert code == 0
    table = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [(r["method"], r["sparsity"]) for r in table] == [
        ("dense", 0.0),
        ("magnitude", 0.2),
        ("magnitude", 0.4),
        ("random", 0.2),
        ("random", 0.4),
    ]
    assert all(r["num_samples"] == 2 for r in table) and table[2]["params"] < table[1]["params"] < table[0]["params"]
    assert "| method | target | achieved | params |" in capsys.readouterr().out
    assert main(["benchmark", "--methods", "rku", "nope", "--limit", "1"]) == 2
    assert "'nope'" in capsys.readouterr().err


def test_recover_keeps_the_adapter_and_push_publishes_it(workspace, tmp_path, monkeypatch, capsys):
    # in-process: recover --save-adapter / --no-merge, then push both layouts to a loopback Hub
    from huggingface_hub import constants

    from optimum_rku.cli import main

    pruned, merged, unmerged = tmp_path / "pruned", tmp_path / "merged", tmp_path / "unmerged"
    prune = ["prune", "--model", str(workspace / "base"), "--output", str(pruned), "--importance", "magnitude"]
    assert main([*prune, "--sparsity", "0.3", "--quiet"]) == 0
    train = ["--max-steps", "2", "--lora-r", "4", "--data-files", str(workspace / "train.jsonl"), "--num-samples", "4"]
    train += ["--batch-size", "2", "--max-length", "160", "--quiet"]
    assert main(["recover", "--checkpoint", str(pruned), "--output", str(merged), "--save-adapter", *train]) == 0
    assert f"LoRA adapter with its pruned base: {merged.resolve() / 'pruned_base'}" in capsys.readouterr().out
    adapter_config = json.loads((merged / "pruned_base" / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == ".."
    assert main(["recover", "--checkpoint", str(pruned), "--output", str(unmerged), "--no-merge", *train]) == 0
    assert f"LoRA adapter to {unmerged.resolve() / 'adapter'}" in capsys.readouterr().out
    assert json.loads((unmerged / "rku_config.json").read_text())["recovery"]["merged"] is False
    assert (unmerged / "adapter" / "adapter_model.safetensors").is_file() and not (unmerged / "pruned_base").exists()

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with LoopbackHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        push = ["push", "--token", "hf_cli"]
        both = ["--repo-id", "me/rec", "--adapter-repo-id", "me/rec-lora"]
        assert main([*push, "--checkpoint", str(merged), *both]) == 0
        out = capsys.readouterr().out
        assert f"LoRA adapter with its pruned base: {hub.url}/me/rec-lora" in out and "pushed: " in out
        assert main([*push, "--checkpoint", str(unmerged), "--repo-id", "me/unmerged"]) == 0
        assert main([*push, "--checkpoint", str(pruned), "--repo-id", "me/x", "--adapter-repo-id", "me/x-lora"]) == 2
        assert "carries no adapter checkpoint" in capsys.readouterr().err
        files = {repo: hub.files(repo) for repo in ("me/rec", "me/rec-lora", "me/unmerged")}
        assert "me/x" not in hub.repos and not hub.unexpected
    for repo in ("me/rec-lora", "me/unmerged"):
        config = json.loads(files[repo]["adapter/adapter_config.json"])
        assert config["base_model_name_or_path"] == repo and "adapter/adapter_model.safetensors" in files[repo]
    assert not any("/" in name for name in files["me/rec"])
    assert "[me/rec-lora](https://huggingface.co/me/rec-lora)" in files["me/rec"]["README.md"].decode()


def test_eval_of_an_adapter_checkpoint_is_base_plus_adapter(workspace, tmp_path, monkeypatch, capsys):
    # eval on `recover --no-merge` output evaluates the recovered model (base + adapter); --no-adapter the pruned base
    # alone; the record, the printed table and the card say which
    import torch
    from conftest import logits

    import optimum_rku.cli.eval as eval_command
    from optimum_rku import RKUModelForCausalLM, load_adapter_model
    from optimum_rku.cli import main

    pruned, unmerged = tmp_path / "pruned", tmp_path / "unmerged"
    prune = ["prune", "--model", str(workspace / "base"), "--output", str(pruned), "--importance", "magnitude"]
    assert main([*prune, "--sparsity", "0.3", "--quiet"]) == 0
    train = ["--max-steps", "3", "--learning-rate", "0.05", "--lora-r", "4", "--num-samples", "4", "--batch-size", "2"]
    train += ["--data-files", str(workspace / "train.jsonl"), "--max-length", "160", "--quiet"]
    assert main(["recover", "--checkpoint", str(pruned), "--output", str(unmerged), "--no-merge", *train]) == 0
    capsys.readouterr()
    evaluated = []
    real = eval_command.evaluate_model

    def spy(model, *args, **kwargs):
        evaluated.append(logits(model))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(eval_command, "evaluate_model", spy)
    problems = ["--dataset", str(workspace / "eval.jsonl"), "--limit", "2", "--max-new-tokens", "4", "--quiet"]
    assert main(["eval", "--model", str(unmerged), *problems]) == 0
    base = logits(RKUModelForCausalLM.from_pretrained(unmerged).eval())
    recovered = logits(load_adapter_model(unmerged).eval())
    assert not torch.allclose(recovered, base, atol=1e-4)  # the adapter changes the model
    assert torch.allclose(evaluated[0], recovered, atol=1e-5)
    assert json.loads((unmerged / "eval_results.json").read_text())["evaluated"] == "base+adapter"
    assert f"| {unmerged} (pruned base + LoRA adapter) |" in capsys.readouterr().out
    card = (unmerged / "README.md").read_text()
    assert "| this model (pruned base + LoRA adapter) |" in card and "(pruned base without adapter)" not in card

    assert main(["eval", "--model", str(unmerged), "--no-adapter", *problems]) == 0
    assert torch.allclose(evaluated[1], base, atol=1e-6)
    assert json.loads((unmerged / "eval_results.json").read_text())["evaluated"] == "base"
    card = (unmerged / "README.md").read_text()
    assert "| this model (pruned base alone, without its LoRA adapter) |" in card
    assert "(%) (pruned base without adapter)" in card.split("---")[1]  # in the model-index metric names too

    capsys.readouterr()
    assert main(["eval", "--model", str(pruned), "--no-adapter", *problems]) == 2  # nothing to leave out
    assert "is not an adapter checkpoint" in capsys.readouterr().err and len(evaluated) == 2
    assert main(["eval", "--model", str(pruned), *problems]) == 0  # a checkpoint without adapter: as before
    assert "evaluated" not in json.loads((pruned / "eval_results.json").read_text())
    assert "| this model (pruned) |" in (pruned / "README.md").read_text()


def test_testbed_defaults(workspace, tmp_path, monkeypatch, capsys):
    # a tiny stand-in for the bundled testbed: `--model` defaults to it, eval defaults to its own test problems
    import optimum_rku.testbed as testbed
    from optimum_rku.cli import main

    monkeypatch.setattr(testbed, "TESTBED_PATH", workspace / "base")
    out = tmp_path / "from-testbed"
    assert main(["prune", "--output", str(out), "--importance", "magnitude", "--sparsity", "0.2", "--quiet"]) == 0
    assert json.loads((out / "rku_config.json").read_text())["data"] == "testbed"
    code = main(["eval", "--model", str(out), "--limit", "3", "--max-new-tokens", "4", "--compare-base", "--quiet"])
    assert code == 0
    summary = json.loads((out / "eval_results.json").read_text())
    assert (summary["benchmark"], summary["num_fewshot"], summary["num_samples"]) == ("testbed", 0, 3)
    questions = [json.loads(line)["question"] for line in (out / "gsm8k_samples.jsonl").read_text().splitlines()]
    assert questions == [p["question"] for p in testbed.make_problems(3, seed=0, split="test")]
    assert summary["dense"]["num_samples"] == 3 and "dense base (testbed)" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    assert "type: optimum-rku-testbed" in card and "(dense base model)" in card and "base_model:" not in card
    monkeypatch.setattr(testbed, "TESTBED_PATH", tmp_path / "missing")
    assert main(["eval", "--limit", "1"]) == 2
    assert "testbed model is missing" in capsys.readouterr().err


def test_recover_on_the_dense_models_own_answers(workspace, tmp_path, monkeypatch, capsys):
    """`recover --answers self`: the dense base answers the data's questions and those answers are the training rows
    (label-free); its base is resolved and the data's layout checked before any model is loaded."""
    import optimum_rku.data.generation as generation
    from optimum_rku.cli import main
    from optimum_rku.data import self_generated

    asked = []

    def answers(model, tokenizer, prompts, **kwargs):
        asked.extend(prompts)
        return generation.Generations(
            [f" It is {i}." for i in range(len(prompts))], [4] * len(prompts), ["eos"] * len(prompts)
        )

    monkeypatch.setattr(self_generated, "generate_completions", answers)
    pruned, recovered = tmp_path / "pruned", tmp_path / "recovered"
    prune = ["prune", "--model", str(workspace / "base"), "--output", str(pruned), "--importance", "magnitude"]
    assert main([*prune, "--sparsity", "0.3", "--quiet"]) == 0
    recover = [
        *("recover", "--checkpoint", str(pruned), "--output", str(recovered), "--answers", "self"),
        *("--data-files", str(workspace / "train.jsonl"), "--num-samples", "3", "--answer-tokens", "16"),
        *("--max-steps", "1", "--lora-r", "4", "--batch-size", "2", "--max-length", "160", "--quiet"),
    ]
    capsys.readouterr()
    assert main(recover) == 2 and "--answers self: " in capsys.readouterr().err  # a local base: only --base finds it
    assert not asked and not recovered.exists()
    given = [arg if arg != "self" else "given" for arg in recover]  # a budget for answers nobody generates
    assert main(given) == 2 and "--answer-tokens 16" in capsys.readouterr().err and not recovered.exists()
    texts = tmp_path / "texts.jsonl"
    write_jsonl(texts, [{"prompt": "a", "response": "b"}])
    layout = [arg if arg != str(workspace / "train.jsonl") else str(texts) for arg in recover]
    assert main([*layout, "--base", str(workspace / "base")]) == 2
    assert "no question/answer rows" in capsys.readouterr().err and not asked

    assert main([*recover, "--base", str(workspace / "base")]) == 0
    assert "Writing model shards" not in capsys.readouterr().err  # --quiet silences transformers' bars too
    questions = {row["question"] for row in map(json.loads, (workspace / "train.jsonl").read_text().splitlines())}
    assert len(asked) == 3 and all(any(q in prompt for q in questions) for prompt in asked)
    recovery = json.loads((recovered / "rku_config.json").read_text())["recovery"]
    assert "own answers" in json.dumps(recovery) and recovery["steps"] == 1
