"""An Ollama `Modelfile` beside an exported GGUF, so `ollama create name -f Modelfile` works without hand editing.

The chat template is the model's own, translated: the tokenizer's Jinja template is rendered with sentinel messages,
and the text around them gives each role's prefix and the end-of-turn text; those become a Go template over
`.System` and `.Messages` (Ollama's format) that renders a conversation as the Jinja template does. A template that
cannot be read as "prefix, content, end of turn" per role gets no TEMPLATE line (Ollama then falls back to the
`tokenizer.chat_template` the GGUF carries). Stop parameters are the end-of-turn text and the eos token.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODELFILE = "Modelfile"
_SYSTEM, _USER, _ASSISTANT = "\x00SYSTEM\x00", "\x00USER\x00", "\x00ASSISTANT\x00"


@dataclass(frozen=True)
class ChatTurns:
    """A chat template read as turns: `prefix + content + end` per role; `default_system` is what the template
    writes when the conversation has no system message (e.g. Qwen's "You are Qwen ..." turn), else ""."""

    system_prefix: str | None
    user_prefix: str
    assistant_prefix: str
    end: str
    default_system: str


def _render(tokenizer: Any, messages: list[dict[str, str]], generation: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def chat_turns(tokenizer: Any) -> ChatTurns | None:
    """The tokenizer's chat template as turns, or None when it has none or is not "prefix, content, end" per role."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    user, assistant = {"role": "user", "content": _USER}, {"role": "assistant", "content": _ASSISTANT}
    try:
        one = _render(tokenizer, [user, assistant], generation=False)
        asked = _render(tokenizer, [user], generation=True)
    except Exception:  # noqa: BLE001 - a template that cannot render these turns gets no TEMPLATE line
        return None
    if one.count(_USER) != 1 or one.count(_ASSISTANT) != 1 or asked.count(_USER) != 1:
        return None
    before_user, after_user = one.split(_USER)
    between, end = after_user.split(_ASSISTANT)
    generation_prompt = asked.split(_USER)[1]
    if not end or not between.startswith(end) or generation_prompt != between:
        return None  # the user turn must end the way the assistant turn does, and the prompt must open the answer
    assistant_prefix = between[len(end) :]
    system_prefix, default_system, user_prefix = None, "", before_user
    try:
        with_system = _render(tokenizer, [{"role": "system", "content": _SYSTEM}, user], generation=True)
    except Exception:  # noqa: BLE001 - templates without a system role (Gemma) raise here
        with_system = None
    if with_system is not None and with_system.count(_SYSTEM) == 1:
        head, rest = with_system.split(_SYSTEM)
        if not rest.startswith(end):
            return None
        user_prefix = rest[len(end) :].split(_USER)[0]
        if not before_user.endswith(user_prefix):
            return None
        system_prefix, default_system = head, before_user[: len(before_user) - len(user_prefix)]
    bos = getattr(tokenizer, "bos_token", None)
    if bos:  # the runtime adds BOS itself (the GGUF's add_bos flag): written in the template too, it would be doubled
        system_prefix = system_prefix.removeprefix(bos) if system_prefix is not None else None
        default_system = default_system.removeprefix(bos)
        if not default_system and system_prefix is None:
            user_prefix = user_prefix.removeprefix(bos)
    return ChatTurns(system_prefix, user_prefix, assistant_prefix, end, default_system)


def ollama_template(turns: ChatTurns) -> str:
    """The Go template (Ollama's TEMPLATE) that renders `.System` and `.Messages` the way the chat template does."""
    if turns.system_prefix is not None:
        system = f"{{{{ if .System }}}}{turns.system_prefix}{{{{ .System }}}}{turns.end}"
        system += f"{{{{ else }}}}{turns.default_system}{{{{ end }}}}"
    else:
        system = turns.default_system
    messages = (
        '{{ range .Messages }}{{ if eq .Role "user" }}'
        f"{turns.user_prefix}{{{{ .Content }}}}{turns.end}"
        '{{ else if eq .Role "assistant" }}'
        f"{turns.assistant_prefix}{{{{ .Content }}}}{turns.end}"
        "{{ end }}{{ end }}"
    )
    return system + messages + turns.assistant_prefix


def modelfile_text(gguf_name: str, tokenizer: Any) -> str:
    """The Modelfile of a GGUF file named `gguf_name` (beside it): FROM, the TEMPLATE, stop parameters."""
    if '"' in gguf_name or "\n" in gguf_name:
        raise ValueError(f"GGUF file name {gguf_name!r} cannot stand in a Modelfile (quotes or newlines).")
    lines = [f"FROM ./{gguf_name}"]
    turns = chat_turns(tokenizer)
    stops: list[str] = []
    if turns is not None:
        template = ollama_template(turns)
        if '"""' in template:
            raise ValueError('the chat template holds """, which a Modelfile TEMPLATE cannot quote')
        lines.append(f'TEMPLATE """{template}"""')
        stops.append(turns.end.strip())
    eos = getattr(tokenizer, "eos_token", None)
    if eos:
        stops.append(eos)
    for stop in dict.fromkeys(s for s in stops if s):
        lines.append(f"PARAMETER stop {_quoted(stop)}")
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_modelfile(gguf_path: str | os.PathLike, tokenizer: Any) -> Path:
    """Write `Modelfile` beside `gguf_path` (atomically) and return its path."""
    from optimum_rku.io.files import atomic_write_text

    path = Path(gguf_path)
    target = path.parent / MODELFILE
    atomic_write_text(target, modelfile_text(path.name, tokenizer))
    return target
