"""Shared fixtures: tiny random models of every supported family, built in-process (no downloads)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from optimum_rku.models.specs import SPECS  # noqa: E402

#: every supported family, from the architecture spec registry
FAMILIES = list(SPECS)


def tiny_config(family: str = "llama", **overrides):
    """A ~100k-parameter config of `family` (its spec's config class) with GQA (8 query heads, 4 KV heads, head_dim 8).

    Family defaults that do not fit a tiny model are adjusted by rule, never by name: token ids outside the tiny
    vocabulary are dropped, and a `query_pre_attn_scalar` (Gemma's attention scale) follows head_dim.
    """
    import transformers

    common = dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=8,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    common.update(overrides)
    cls = getattr(transformers, SPECS[family].config_class)
    if "query_pre_attn_scalar" in getattr(cls, "__dataclass_fields__", {}):
        common.setdefault("query_pre_attn_scalar", common["head_dim"])
    config = cls(**common)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value >= config.vocab_size:
            setattr(config, name, None)
    config._attn_implementation = "eager"
    return config


def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    """A randomly initialized *ForCausalLM with non-trivial (non-zero) biases where the family has them."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def token_dataset(n: int = 6, length: int = 16, vocab: int = 96, seed: int = 0):
    """A tokenized calibration set with ragged lengths (so padding is exercised)."""
    import datasets

    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        size = length - (i % 3) * 3
        rows.append(torch.randint(3, vocab, (size,), generator=g).tolist())
    return datasets.Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})


@pytest.fixture
def calib():
    return token_dataset()


def sample_inputs(vocab: int = 96, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (2, 12), generator=g)


def make_tokenizer(vocab: int = 96):
    """A tiny character-level fast tokenizer (ids < vocab) with pad/eos/bos/unk."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 32 + vocab - 4)]
    vocab_map = {"<pad>": 0, "</s>": 1, "<s>": 2, "<unk>": 3}
    for i, ch in enumerate(chars):
        vocab_map[ch] = i + 4
    tok = Tokenizer(models.WordLevel(vocab_map, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    from tokenizers import decoders

    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="<s>", unk_token="<unk>"
    )


def logits(model, ids=None):
    """Logits of `model` on `ids` (default: `sample_inputs()`), without gradients."""
    with torch.no_grad():
        return model(sample_inputs() if ids is None else ids).logits


def masked_logits(model, masks):
    """Dense model with the removed structures zeroed at the down_proj / o_proj inputs."""
    from optimum_rku.importance import get_importance
    from optimum_rku.scoring.collect import StatsCollector

    importance = get_importance("magnitude")  # a method that needs no statistics: hooks only apply the masks
    with StatsCollector(model, importance, masks), torch.no_grad():
        return model(sample_inputs()).logits


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny models run single-threaded (intra-op threads only add overhead on a busy 2-core box); a module opts in
    with `pytestmark = pytest.mark.usefixtures("single_torch_thread")`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


#: a minimal chat template (user turn, then the assistant prompt) for tiny chat models
CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<|bot|>{% endif %}"
)


def chat_benchmark_workspace(root):
    """A tiny Llama with a chat-template tokenizer saved at `root/model`, and GSM8K-style jsonl files at
    `root/gsm8k` (40 train, 6 test problems): what the real-model benchmarks run on in tests."""
    import json

    tok = make_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    tiny_model("llama", max_position_embeddings=256).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    data = root / "gsm8k"
    data.mkdir()
    for name, offset, n in (("train.jsonl", 0, 40), ("test.jsonl", 100, 6)):
        rows = [
            {"question": f"{i}+{i + 1}?", "answer": f"{i}+{i + 1}={2 * i + 1} #### {2 * i + 1}"}
            for i in range(offset, offset + n)
        ]
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
