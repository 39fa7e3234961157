"""llama.cpp quantization (Q4_K_M, Q8_0, ...) of an exported GGUF, and the report of which tensor got which type.

llama.cpp's quantizer picks one type per tensor from the requested mix (Q4_K_M: mostly Q4_K, Q6_K for some attn_v /
ffn_down and the output layer) and falls back when a tensor's row length (its number of columns) is not a multiple of
that type's block: 256 values for K-quants, 32 for the others. Q4_K becomes Q5_0, Q5_K Q5_1, Q6_K Q8_0, Q2_K / Q3_K
Q4_0, and a row that is not even a multiple of 32 stays F16 (llama.cpp's `llama-quant.cpp`, `tensor_type_fallback`).
`ffn_down` rows are the kept FFN width, so a pruned width such as 1266 costs the K-quant (or, not a multiple of 32,
the quantization) of that tensor: `RKUConfig(round_to=...)` keeps widths on the block. The rule lives here once:
`fallback_for` predicts it from shapes before anything is written, and `read_types` names it in a written file.

The quantizer itself is llama.cpp's (`llama_model_quantize` through llama-cpp-python, the optional `[llamacpp]`
extra); nothing else in the package needs llama.cpp.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optimum_rku.config import GGUF_K_BLOCK, GGUF_LEGACY_BLOCK

#: llama.cpp file types (`llama_ftype`) that `quantize=` accepts, by the name llama-quantize uses (lower case)
QUANT_TYPES: dict[str, int] = {
    "q4_0": 2,
    "q4_1": 3,
    "q8_0": 7,
    "q5_0": 8,
    "q5_1": 9,
    "q2_k": 10,
    "q3_k_s": 11,
    "q3_k_m": 12,
    "q3_k_l": 13,
    "q4_k_s": 14,
    "q4_k_m": 15,
    "q5_k_s": 16,
    "q5_k_m": 17,
    "q6_k": 18,
}
#: llama.cpp's fallback when a row does not fit the block (F16 when the fallback's 32-block does not fit either)
FALLBACKS = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_QUANTIZED = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", *FALLBACKS}
logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "optimum-rku[llamacpp]" (builds llama.cpp from source, about 17 minutes on 2 cores)'


def check_quantize(quantize: Any) -> str:
    """`quantize` in lower case, or a ValueError naming the accepted llama.cpp types."""
    if not isinstance(quantize, str) or quantize.lower() not in QUANT_TYPES:
        raise ValueError(f"quantize={quantize!r} is not supported; allowed: {', '.join(QUANT_TYPES)}.")
    return quantize.lower()


def require_llama_cpp() -> None:
    """Raise an ImportError with the install line when llama-cpp-python is missing (before any heavy work)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as err:
        raise ImportError(f"quantizing needs llama.cpp's quantizer from llama-cpp-python: {INSTALL_HINT}.") from err


def block_of(quantize: str) -> int:
    """The block a mix's main type needs (256 for K-quant mixes, 32 otherwise)."""
    return GGUF_K_BLOCK if "_k" in check_quantize(quantize) else GGUF_LEGACY_BLOCK


@dataclass(frozen=True)
class Fallback:
    """One tensor that could not take its mix's type: its row length, the type it got and why."""

    tensor: str
    columns: int
    wanted: str
    got: str

    @property
    def reason(self) -> str:
        block = GGUF_K_BLOCK if self.wanted in FALLBACKS else GGUF_LEGACY_BLOCK
        text = f"row length {self.columns} is not a multiple of {block} ({self.wanted} blocks)"
        if self.got == "F16":
            text += f" nor of {GGUF_LEGACY_BLOCK}"
        return text


def fallback_for(name: str, columns: int, wanted: str) -> Fallback | None:
    """llama.cpp's fallback rule for a tensor of `columns` columns meant to be `wanted` (a ggml type name)."""
    wanted = wanted.upper()
    if wanted in FALLBACKS and columns % GGUF_K_BLOCK:
        got = FALLBACKS[wanted] if columns % GGUF_LEGACY_BLOCK == 0 else "F16"
        return Fallback(name, columns, wanted, got)
    if wanted in _QUANTIZED and wanted not in FALLBACKS and columns % GGUF_LEGACY_BLOCK:
        return Fallback(name, columns, wanted, "F16")
    return None


def expected_fallbacks(shapes: dict[str, tuple[int, ...]], quantize: str) -> list[Fallback]:
    """Tensors (name -> numpy shape, rows first) whose rows cannot take the mix's main type, before quantizing.

    Checked against the main type only (Q4_K for Q4_K_M): the mix's Q6_K tensors follow the same 256 rule."""
    wanted = _main(check_quantize(quantize).upper())
    found = (fallback_for(name, shape[-1], wanted) for name, shape in shapes.items() if len(shape) >= 2)
    return [f for f in found if f is not None]


@dataclass
class TypeReport:
    """The tensor types of a GGUF file and every fallback in it, with the reason."""

    file_type: str
    types: dict[str, int]
    fallbacks: list[Fallback] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable: type counts, then fallbacks grouped by tensor kind, type and row length."""
        out = [f"tensor types ({self.file_type}): {type_counts(self.types)}"]
        groups = Counter((_kind(f.tensor), f.columns, f.wanted, f.got) for f in self.fallbacks)
        for (kind, columns, wanted, got), n in sorted(groups.items()):
            reason = Fallback(kind, columns, wanted, got).reason
            out.append(f"fallback: {kind} x{n}: {wanted} -> {got} ({reason})")
        if not self.fallbacks and self.file_type.lower() in QUANT_TYPES:
            out.append("fallback: none (every row fits its type's block)")
        return out


def type_counts(types: dict[str, int]) -> str:
    """ "Q4_K x97, F32 x49" (most common first), or "-" when there are none."""
    return ", ".join(f"{t} x{n}" for t, n in sorted(types.items(), key=lambda kv: -kv[1])) or "-"


def _kind(name: str) -> str:
    """`blk.7.ffn_down.weight` -> `ffn_down` (non-block tensors keep their name)."""
    parts = name.split(".")
    return parts[2] if parts[0] == "blk" and len(parts) > 2 else parts[0]


def file_type_name(value: int) -> str:
    """`general.file_type` as llama-quantize names it (e.g. 15 -> "Q4_K_M"), "F16" / "F32" / "BF16", else "other"."""
    names = {0: "F32", 1: "F16", 32: "BF16"} | {v: k.upper() for k, v in QUANT_TYPES.items()}
    return names.get(int(value), "other")


def read_types(path: str | os.PathLike) -> TypeReport:
    """Every tensor's type in a GGUF file, and which of them are llama.cpp fallbacks (read from the header only)."""
    import gguf

    return types_of(gguf.GGUFReader(str(path)))


def types_of(reader) -> TypeReport:
    """`read_types` of an open `gguf.GGUFReader`."""
    field_ = reader.fields.get("general.file_type")
    file_type = file_type_name(field_.contents()) if field_ is not None else "unknown"
    types = Counter(t.tensor_type.name for t in reader.tensors)
    fallbacks = []
    if file_type.lower() in QUANT_TYPES:
        undo = {v: k for k, v in FALLBACKS.items()} if block_of(file_type) == GGUF_K_BLOCK else {}
        for tensor in reader.tensors:
            got, columns = tensor.tensor_type.name, int(tensor.shape[0])
            wanted = undo.get(got, _main(file_type)) if got != "F16" else _main(file_type)
            found = fallback_for(tensor.name, columns, wanted) if len(tensor.shape) >= 2 else None
            if found is not None and found.got == got:
                fallbacks.append(found)
    return TypeReport(file_type, dict(types), fallbacks)


def _main(file_type: str) -> str:
    """The main ggml type of a mix ("Q4_K_M" -> "Q4_K", "Q8_0" -> "Q8_0")."""
    return file_type.split("_K")[0] + "_K" if "_K" in file_type else file_type


def quantize_gguf(
    source: str | os.PathLike, output: str | os.PathLike, quantize: str, threads: int | None = None
) -> TypeReport:
    """Quantize a float GGUF file (f32 / f16 / bf16) with llama.cpp's `llama_model_quantize` into `output`.

    llama.cpp's per-tensor log goes to this module's logger at DEBUG; every fallback it logs must appear in the report
    read back from the file."""
    quantize = check_quantize(quantize)
    require_llama_cpp()
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[quantize]
    params.nthread = int(threads or 0)  # 0: llama.cpp uses every core
    with llama_log() as log:
        status = llama_cpp.llama_model_quantize(
            os.fsencode(Path(source)), os.fsencode(Path(output)), llama_cpp.byref(params)
        )
    text = "".join(log)
    logger.debug("llama.cpp quantizer:\n%s", text)
    if status != 0:
        tail = "\n".join(text.strip().splitlines()[-3:])
        raise RuntimeError(
            f"llama.cpp could not quantize {Path(source).name} to {quantize} (status {status}):\n{tail}"
        )
    report = read_types(output)
    missed = set(re.findall(r"warning: (\S+)\s+- ncols", text)) - {f.tensor for f in report.fallbacks}
    if missed:  # the header rule should see every fallback llama.cpp logs (it also sees deliberate Q8_0 outputs)
        logger.warning("llama.cpp logged fallbacks the report does not name: %s", ", ".join(sorted(missed)))
    return report


@contextmanager
def llama_log():
    """Collect llama.cpp's log lines (a list, filled while inside), then give logging back to llama-cpp-python."""
    import ctypes

    import llama_cpp
    from llama_cpp import _logger

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
