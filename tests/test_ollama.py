"""The Ollama Modelfile: the chat template read as turns reproduces the Jinja rendering; export writes it beside the
GGUF (no Ollama or llama.cpp needed)."""

from __future__ import annotations

import pytest
from conftest import make_tokenizer

from optimum_rku.export.ollama import ChatTurns, chat_turns, modelfile_text, ollama_template

CHATML = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
    "{% endif %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
#: the answer is not closed the way the question is: not "prefix, content, end" per role
ODD = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% if m['role'] == 'user' %} //{% endif %}{% endfor %}"
)


def tokenizer_with(template: str):
    tokenizer = make_tokenizer()
    tokenizer.chat_template = template
    return tokenizer


def go_render(turns: ChatTurns, system: str | None, messages: list[dict[str, str]]) -> str:
    """What the Go template renders (its three constructs, spelled out in Python)."""
    if turns.system_prefix is not None and system:
        text = turns.system_prefix + system + turns.end
    else:
        text = turns.default_system
    for message in messages:
        prefix = turns.user_prefix if message["role"] == "user" else turns.assistant_prefix
        text += prefix + message["content"] + turns.end
    return text + turns.assistant_prefix


CONVERSATION = [
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "And 6 * 7?"},
]


@pytest.mark.parametrize("template", [CHATML, LLAMA3, GEMMA], ids=["chatml", "llama3", "gemma"])
@pytest.mark.parametrize("system", [None, "Be brief."])
def test_turns_render_a_conversation_as_the_chat_template_does(template, system):
    tokenizer = tokenizer_with(template)
    turns = chat_turns(tokenizer)
    assert turns is not None
    if template == GEMMA and system:
        assert turns.system_prefix is None  # no system role: the template raises on one
        return
    messages = ([{"role": "system", "content": system}] if system else []) + CONVERSATION
    jinja = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert go_render(turns, system, CONVERSATION) == jinja.removeprefix(tokenizer.bos_token)  # BOS: the runtime's


def test_chatml_turns_and_the_modelfile():
    tokenizer = tokenizer_with(CHATML)
    turns = chat_turns(tokenizer)
    assert turns == ChatTurns(
        "<|im_start|>system\n",
        "<|im_start|>user\n",
        "<|im_start|>assistant\n",
        "<|im_end|>\n",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n",
    )
    template = ollama_template(turns)
    assert template.startswith("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ else }}")
    assert '{{ range .Messages }}{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n' in template
    text = modelfile_text("tiny-q8_0.gguf", tokenizer)
    lines = text.splitlines()
    assert lines[0] == "FROM ./tiny-q8_0.gguf" and lines[1].startswith('TEMPLATE """{{ if .System }}')
    assert lines[-2:] == ['PARAMETER stop "<|im_end|>"', 'PARAMETER stop "</s>"']
    with pytest.raises(ValueError, match="quotes"):
        modelfile_text('a"b.gguf', tokenizer)


def test_templates_that_are_not_turns_get_no_template_line():
    for tokenizer in (tokenizer_with(ODD), make_tokenizer()):
        assert chat_turns(tokenizer) is None
        assert modelfile_text("m.gguf", tokenizer) == 'FROM ./m.gguf\nPARAMETER stop "</s>"\n'


def test_export_writes_the_modelfile_beside_the_gguf(tmp_path, capsys):
    pytest.importorskip("gguf", reason="GGUF export needs the gguf package")
    from test_gguf_export import prune_tiny
    from transformers import AutoTokenizer

    from optimum_rku.cli import main

    ckpt = prune_tiny("llama", "uniform", tmp_path / "ckpt")
    tokenizer = AutoTokenizer.from_pretrained(ckpt)  # the checkpoint's byte-level BPE tokenizer, with a template
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(ckpt)
    out = tmp_path / "deploy" / "tiny.gguf"
    out.parent.mkdir()
    assert main(["export", "gguf", "--checkpoint", str(ckpt), "--output", str(out), "--modelfile"]) == 0
    assert "ollama create my-model -f" in capsys.readouterr().out
    assert (out.parent / "Modelfile").read_text() == modelfile_text("tiny.gguf", tokenizer)
