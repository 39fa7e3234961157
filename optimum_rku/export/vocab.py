"""The tokenizer part of a GGUF file: llama.cpp's `tokenizer.ggml.*` keys from a checkpoint's `tokenizer.json`.

llama.cpp re-implements each tokenizer, so a GGUF names its algorithm (`tokenizer.ggml.model`) and, for byte-level
BPE, its pre-tokenizer (`tokenizer.ggml.pre`, the regex that splits text before merging). llama.cpp's own converter
recognises a pre-tokenizer by hashing the token ids of a test string, which only works for tokenizers it has seen;
this module reads the pre-tokenizer's *structure* in `tokenizer.json` instead, so retrained or GGUF-derived
tokenizers (the testbed's, SmolLM2's as transformers rebuilds it from its GGUF) are named correctly. Special-token
ids, merges, chat template and add-BOS/EOS flags come from gguf-py's `SpecialVocab` (llama.cpp's own code for that).

Handled: byte-level BPE (`"gpt2"` model) with the pre-tokenizers below, whatever `tokenizer_class` says
(transformers 5 writes `TokenizersBackend`, which older converters reject). Other tokenizers (SentencePiece models of
Llama-2, Mistral v0.1-v0.3, Gemma; WordLevel; Unigram) fail with a clear error; for those, or to override the
detection, copy the tokenizer of a GGUF of the same base model (`tokenizer_gguf=`) or name the pre-tokenizer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the Split regex of Llama-3 tokenizers (llama.cpp pre-tokenizer "llama-bpe")
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
#: the Split regex of Qwen2 / Qwen2.5 / Qwen3 tokenizers (llama.cpp pre-tokenizer "qwen2")
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: tokenizer.json pre-tokenizer shapes this module recognises, as documented to users
RECOGNISED_PRE_TOKENIZERS = {
    "gpt-2": "ByteLevel with its GPT-2 regex (GPT-2, tokenizers rebuilt by transformers from a GGUF)",
    "smollm": "Digits(individual) then ByteLevel regex, clean_up_tokenization_spaces=False (SmolLM, the testbed)",
    "starcoder": "Digits(individual) then ByteLevel regex, clean_up_tokenization_spaces=True (StarCoder)",
    "llama-bpe": "Split(Llama-3 regex) then ByteLevel without regex (Llama-3)",
    "qwen2": "Split(Qwen2 regex) then ByteLevel without regex (Qwen2, Qwen2.5, Qwen3)",
}
_PRE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass
class Vocab:
    """What is written under `tokenizer.ggml.*`, and a one-line account of how it was obtained."""

    model: str
    pre: str | None
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    special_ids: dict[str, int] = field(default_factory=dict)
    add_special: dict[str, bool] = field(default_factory=dict)
    chat_template: Any = None
    copied: dict[str, tuple[Any, Any, Any]] | None = None  # key -> (value, value type, array sub-type), from a GGUF
    source: str = ""


def check_pre_tokenizer(pre_tokenizer: Any) -> str | None:
    """Validate a user-named llama.cpp pre-tokenizer (`tokenizer.ggml.pre`)."""
    if pre_tokenizer is None:
        return None
    if not isinstance(pre_tokenizer, str) or not _PRE_NAME.match(pre_tokenizer):
        raise ValueError(
            f"pre_tokenizer={pre_tokenizer!r} is not a llama.cpp pre-tokenizer name (lower-case letters, digits, "
            f"'-', '.', '_'), e.g. one of {', '.join(RECOGNISED_PRE_TOKENIZERS)}."
        )
    return pre_tokenizer


def _is_byte_level(node: dict, use_regex: bool) -> bool:
    return (
        node.get("type") == "ByteLevel"
        and bool(node.get("use_regex", True)) == use_regex
        and not node.get("add_prefix_space", False)
    )


def _split_regex(node: dict) -> str | None:
    if node.get("type") != "Split" or str(node.get("behavior", "")).lower() != "isolated" or node.get("invert"):
        return None
    pattern = node.get("pattern") or {}
    return pattern.get("Regex")


def detect_pre_tokenizer(tokenizer_json: dict, clean_up_spaces: bool) -> str | None:
    """The llama.cpp pre-tokenizer whose splitting equals this tokenizer.json's, or None when none is known."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if len(steps) == 1 and _is_byte_level(steps[0], use_regex=True):
        return "gpt-2"
    if len(steps) != 2:
        return None
    first, second = steps
    if first.get("type") == "Digits" and first.get("individual_digits") and _is_byte_level(second, use_regex=True):
        return "starcoder" if clean_up_spaces else "smollm"
    if _is_byte_level(second, use_regex=False):
        regex = _split_regex(first)
        if regex == LLAMA3_SPLIT:
            return "llama-bpe"
        if regex == QWEN2_SPLIT:
            return "qwen2"
    return None


def _describe_pre(tokenizer_json: dict) -> str:
    pre = tokenizer_json.get("pre_tokenizer")
    text = json.dumps(pre, sort_keys=True) if pre is not None else "none"
    return text if len(text) <= 200 else text[:197] + "..."


def _special_flags(directory: Path, bos_id: int | None, eos_id: int | None) -> dict[str, bool]:
    """Whether the checkpoint's tokenizer adds BOS / EOS to plain text, measured by encoding a word."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    with_special = tokenizer.encode("Hello", add_special_tokens=True).ids
    plain = tokenizer.encode("Hello", add_special_tokens=False).ids
    extra = len(with_special) > len(plain)
    return {
        "bos": bool(extra and bos_id is not None and with_special[0] == bos_id),
        "eos": bool(extra and eos_id is not None and with_special[-1] == eos_id),
    }


def read_byte_level_bpe(directory: Path, vocab_size: int, pre_tokenizer: str | None) -> Vocab:
    """Tokens, types, merges and special ids of a byte-level BPE `tokenizer.json` (llama.cpp model "gpt2")."""
    import gguf

    file = directory / "tokenizer.json"
    if not file.is_file():
        raise ValueError(
            f"{str(directory)!r} has no tokenizer.json; the GGUF needs the tokenizer. Save the tokenizer with the "
            "checkpoint, or pass tokenizer_gguf=<a GGUF of the same base model> (--tokenizer-gguf) to copy its one."
        )
    data = json.loads(file.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    decoder = data.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        kind = model.get("type", "unknown") + (
            " with byte fallback (SentencePiece style)" if model.get("byte_fallback") else ""
        )
        raise ValueError(
            f"The tokenizer of {str(directory)!r} is {kind} (decoder {decoder.get('type')!r}); the GGUF exporter "
            "writes byte-level BPE tokenizers (Llama-3, Qwen2/2.5/3, SmolLM2, GPT-2 style). For SentencePiece "
            "tokenizers (Llama-2, Mistral v0.1-v0.3, Gemma, Phi-3-mini) pass tokenizer_gguf=<a GGUF of the same "
            "base model> (--tokenizer-gguf) to copy its tokenizer."
        )
    config_file = directory / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    clean_up = bool(tokenizer_config.get("clean_up_tokenization_spaces", False))
    pre = pre_tokenizer or detect_pre_tokenizer(data, clean_up)
    if pre is None:
        known = "; ".join(f"{name!r}: {text}" for name, text in RECOGNISED_PRE_TOKENIZERS.items())
        raise ValueError(
            f"The pre-tokenizer of {str(directory)!r} ({_describe_pre(data)}) is not one the exporter recognises "
            f"({known}). Name the llama.cpp pre-tokenizer that splits text the same way with pre_tokenizer=... "
            "(--pre-tokenizer), or copy a tokenizer from a GGUF of the same base model with tokenizer_gguf=..."
        )

    by_id: dict[int, str] = {int(i): tok for tok, i in model.get("vocab", {}).items()}
    types: dict[int, int] = {}
    for added in data.get("added_tokens", []):
        index = int(added["id"])
        by_id[index] = added["content"]
        types[index] = int(gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED)
    if by_id and max(by_id) >= vocab_size:
        raise ValueError(
            f"The tokenizer of {str(directory)!r} has token id {max(by_id)} but the model has only {vocab_size} "
            "embedding rows (config vocab_size); the checkpoint's tokenizer does not belong to its weights."
        )
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    token_types = [
        types.get(i, int(gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED)) for i in range(vocab_size)
    ]
    special = gguf.SpecialVocab(directory, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise ValueError(f"The BPE tokenizer of {str(directory)!r} has no merges; llama.cpp cannot use it.")
    flags = _special_flags(directory, special.special_token_ids.get("bos"), special.special_token_ids.get("eos"))
    how = "named by the caller" if pre_tokenizer else "recognised from tokenizer.json"
    return Vocab(
        model="gpt2",
        pre=pre,
        tokens=tokens,
        types=token_types,
        merges=list(special.merges),
        special_ids=dict(special.special_token_ids),
        add_special=flags,
        chat_template=special.chat_template,
        source=f"byte-level BPE from tokenizer.json, pre-tokenizer {pre!r} ({how})",
    )


def read_gguf_tokenizer(path: Path, vocab_size: int, pre_tokenizer: str | None) -> Vocab:
    """Every `tokenizer.*` key of an existing GGUF file (e.g. the base model's release), checked against the model."""
    import gguf

    if not path.is_file():
        raise FileNotFoundError(f"tokenizer_gguf {str(path)!r}: no such file.")
    reader = gguf.GGUFReader(str(path))
    copied: dict[str, tuple[Any, Any, Any]] = {}
    for key, value in reader.fields.items():
        if key.startswith("tokenizer."):
            main = value.types[0]
            sub = value.types[-1] if main == gguf.GGUFValueType.ARRAY else None
            copied[key] = (value.contents(), main, sub)
    tokens = copied.get(gguf.Keys.Tokenizer.LIST, ([], None, None))[0]
    if not tokens:
        raise ValueError(f"tokenizer_gguf {str(path)!r} has no tokenizer (no {gguf.Keys.Tokenizer.LIST}).")
    if len(tokens) != vocab_size:
        raise ValueError(
            f"tokenizer_gguf {str(path)!r} has {len(tokens)} tokens but the checkpoint has {vocab_size} embedding "
            "rows; use a GGUF of the same base model."
        )
    if pre_tokenizer is not None:
        copied[gguf.Keys.Tokenizer.PRE] = (pre_tokenizer, gguf.GGUFValueType.STRING, None)
    model = copied.get(gguf.Keys.Tokenizer.MODEL, ("?", None, None))[0]
    pre = copied.get(gguf.Keys.Tokenizer.PRE, (None, None, None))[0]
    return Vocab(
        model=model,
        pre=pre,
        tokens=list(tokens),
        types=[],
        copied=copied,
        source=f"copied from {path.name} (model {model!r}, pre-tokenizer {pre!r})",
    )


def write_vocab(writer, vocab: Vocab) -> None:
    """Add the `tokenizer.ggml.*` keys to a `gguf.GGUFWriter`."""
    if vocab.copied is not None:
        for key, (value, main, sub) in vocab.copied.items():
            writer.add_key_value(key, value, main, sub_type=sub)
        return
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    for kind, token_id in vocab.special_ids.items():
        add = getattr(writer, f"add_{kind}_token_id", None)
        if add is not None:
            add(token_id)
    writer.add_add_bos_token(vocab.add_special.get("bos", False))
    writer.add_add_eos_token(vocab.add_special.get("eos", False))
    if vocab.chat_template is not None:
        writer.add_chat_template(vocab.chat_template)
