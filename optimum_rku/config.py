"""`RKUConfig`: every knob of a pruning run, validated on construction and round-tripped through JSON."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

CONFIG_NAME = "rku_config.json"

TARGETS = ("both", "mlp", "attention")
OBJECTIVES = ("self_nll", "hidden_energy", "nll", "decode_nll")
NORMALIZATIONS = ("fisher_trace", "none")
ALLOCATIONS = ("global", "uniform")
ATTENTION_GRANULARITIES = ("kv_group", "query_head")
CALIBRATIONS = ("dataset", "self_generated")
GENERATION_CHAT_TEMPLATES = ("auto", "on", "off")
#: how `allocation="global"` compares units of different layers and types (docs/design.md, "Ranking")
RANKINGS = ("auto", "score", "per_parameter", "standardized", "expected_loss", "measured_loss")
#: `kv_cache_tokens="auto"`: the cache of one sequence this long (or of the model's whole context, if shorter)
DEFAULT_KV_CACHE_TOKENS = 6144
#: the answer budget of the dense model's own answers that recovery can learn (`self_distillation_dataset`,
#: `optimum-rku recover --answers self`)
DEFAULT_ANSWER_TOKENS = 256
#: weight of the KL term and softmax temperature of distillation from the dense model (`recover --teacher`)
DEFAULT_DISTILLATION_ALPHA, DEFAULT_DISTILLATION_TEMPERATURE = 0.5, 1.0
#: values per quantization block in llama.cpp: K-quants pack 256, the legacy types (and K-quants' fallbacks) 32
GGUF_K_BLOCK, GGUF_LEGACY_BLOCK = 256, 32
#: `round_to="auto"`: kept FFN widths in multiples of the largest of these blocks that divides the layer's width into
#: at least `AUTO_ROUND_MIN_BLOCKS` blocks (256: every llama.cpp K-quant; 32: every other type; both feed the GEMM
#: kernels whole tiles), else no rounding (docs/benchmarks.md, "Quantized GGUF and aligned widths")
AUTO_ROUND_BLOCKS = (GGUF_K_BLOCK, 128, 64, GGUF_LEGACY_BLOCK)
AUTO_ROUND_MIN_BLOCKS = 16
#: RKU's activity term A_s: mean |y| (L2 over a head's slice), or the spread around the calibration mean
ACTIVITIES = ("abs", "centered")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"RKUConfig.{name}={value!r} is not supported; allowed: {', '.join(map(repr, allowed))}.")


def _number(name: str, value: Any, low: float, high: float, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"RKUConfig.{name} must be {'an int' if integer else 'a number'}, got {value!r}.")
    if not low <= value <= high:
        raise ValueError(f"RKUConfig.{name}={value!r} is out of range; allowed: [{low}, {high}].")


@dataclass
class RKUConfig:
    """Configuration of a structured-pruning run (what to score, how to rank, how much to remove).

    `sparsity` is the fraction of prunable decoder parameters (q/k/v/o and gate/up/down of every block) removed.
    Defaults follow the quality benchmark (docs/benchmarks.md): the model answers the calibration questions itself
    (`calibration="self_generated"`) and RKU is scored with `decode_nll`, the NLL of those answer tokens (on plain
    `calibration="dataset"` text, `decode_nll` is the NLL of every text token, i.e. `nll`). Self-generated questions
    are asked through the tokenizer's chat template when it has one (`generation_chat_template="auto"`; "on" requires
    one, "off" always uses the plain `Question: q\nAnswer:` prompt).
    `bias_compensation=True` adds the calibration-mean output of removed channels / heads to the down_proj / o_proj
    bias (FLAP's compensation); only families whose config can build those biases accept it (`output_bias_flags` in
    `models/specs.py`); "auto" turns it on exactly there (off by default: on SmolLM2 its gain with RKU was within
    noise). `ranking="auto"` is the importance's `default_ranking` (RKU: the Fisher of a mask on each structure per unit
    of cost, `measured_loss`), chosen on a real pretrained model (docs/benchmarks.md). In the rankings that divide by
    cost, a KV group costs its parameters plus the KV cache it frees at `kv_cache_tokens` cached tokens (0: its
    parameters alone); "auto" is one sequence of 6144 tokens — the smallest multiple of 2048 whose plan cuts SmolLM2's
    KV cache by at least a quarter at 40% sparsity (docs/benchmarks.md) — or of the model's whole context when that is
    shorter (a sequence cannot cache more).
    `round_to` keeps every FFN width a multiple of this many channels; "auto" picks, per layer, the largest of 256 /
    128 / 64 / 32 that splits its width into at least 16 blocks (Qwen2.5's 4864: 256; SmolLM2's 1536: 64), else 1,
    stepping down while the plan misses the sparsity target by more than a point (uniform plans move in whole blocks):
    llama.cpp's K-quants need rows in multiples of 256 (else its quantizer falls back to larger types, or F16 below
    32) and its f16 / f32 prefill kernels run whole tiles only on aligned widths (docs/benchmarks.md).
    `token_gradient_floor` lifts each token's NLL gradient at the logits to at least this norm in the scoring
    objective (0: plain NLL), so the tokens a confident model is sure of still count: on the testbed, whose own
    answers are near certain, plain NLL let a few uncertain tokens decide the ranking (docs/benchmarks.md).
    """

    sparsity: float = 0.4
    targets: str = "both"
    importance: str = "rku"
    objective: str = "decode_nll"
    normalization: str = "fisher_trace"
    allocation: str = "global"
    ranking: str = "auto"
    attention_granularity: str = "kv_group"
    min_keep: float = 0.1
    min_keep_attention: float | None = None
    protected_layers: list[int] = field(default_factory=list)
    round_to: int | str = "auto"
    num_calibration_samples: int = 128
    calibration_seq_len: int = 256
    num_iterations: int = 1
    seed: int = 2016
    calibration: str = "self_generated"
    generation_max_new_tokens: int = 256
    generation_do_sample: bool = False
    generation_temperature: float = 0.7
    generation_top_p: float = 0.95
    generation_chat_template: str = "auto"
    bias_compensation: bool | str = False
    activity: str = "abs"
    kv_cache_tokens: int | str = "auto"
    token_gradient_floor: float = 0.01

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a ValueError/TypeError naming the first bad field and what is allowed."""
        from optimum_rku.importance import available_importances, get_importance

        _number("sparsity", self.sparsity, 0.0, 0.9)
        _choice("targets", self.targets, TARGETS)
        _choice("importance", self.importance, tuple(available_importances()))
        _choice("objective", self.objective, OBJECTIVES)
        _choice("normalization", self.normalization, NORMALIZATIONS)
        _choice("allocation", self.allocation, ALLOCATIONS)
        _choice("ranking", self.ranking, RANKINGS)
        _choice("activity", self.activity, ACTIVITIES)
        _choice("attention_granularity", self.attention_granularity, ATTENTION_GRANULARITIES)
        _choice("calibration", self.calibration, CALIBRATIONS)
        _choice("generation_chat_template", self.generation_chat_template, GENERATION_CHAT_TEMPLATES)
        _number("min_keep", self.min_keep, 0.0, 1.0)
        _number("token_gradient_floor", self.token_gradient_floor, 0.0, 1.0)
        if self.min_keep_attention is not None:
            _number("min_keep_attention", self.min_keep_attention, 0.0, 1.0)
        importance = get_importance(self.importance)
        if self.ranking != "auto" and self.ranking not in importance.rankings:
            fisher = [name for name in available_importances() if get_importance(name).yields_fisher]
            raise ValueError(
                f"RKUConfig.ranking={self.ranking!r} needs Fisher statistics, which importance={self.importance!r} does "
                f"not yield; allowed: ranking in {sorted(importance.rankings)}, or an importance that yields them "
                f"({', '.join(map(repr, fisher))})."
            )
        importance.check_config(self)
        if self.round_to != "auto":
            if isinstance(self.round_to, str):
                raise ValueError(
                    f"RKUConfig.round_to={self.round_to!r} is not supported; allowed: 'auto' or an integer >= 1."
                )
            _number("round_to", self.round_to, 1, 1 << 20, integer=True)
        if self.kv_cache_tokens != "auto":
            if isinstance(self.kv_cache_tokens, str):
                raise ValueError(
                    f"RKUConfig.kv_cache_tokens={self.kv_cache_tokens!r} is not supported; allowed: 'auto' or an "
                    "integer >= 0 (cached tokens a KV group is priced at)."
                )
            _number("kv_cache_tokens", self.kv_cache_tokens, 0, 1 << 30, integer=True)
        _number("num_calibration_samples", self.num_calibration_samples, 1, 1 << 30, integer=True)
        _number("calibration_seq_len", self.calibration_seq_len, 2, 1 << 20, integer=True)
        _number("num_iterations", self.num_iterations, 1, 100, integer=True)
        _number("seed", self.seed, 0, 2**63 - 1, integer=True)
        _number("generation_max_new_tokens", self.generation_max_new_tokens, 1, 1 << 16, integer=True)
        _number("generation_temperature", self.generation_temperature, 1e-6, 100.0)
        _number("generation_top_p", self.generation_top_p, 1e-6, 1.0)
        if not isinstance(self.generation_do_sample, bool):
            raise TypeError(f"RKUConfig.generation_do_sample must be a bool, got {self.generation_do_sample!r}.")
        if not isinstance(self.bias_compensation, bool) and self.bias_compensation != "auto":
            raise TypeError(
                f"RKUConfig.bias_compensation must be a bool or 'auto', got {self.bias_compensation!r}; allowed: True, False or "
                "'auto' (on where the family can hold an output bias and the importance is calibration-based)."
            )
        if self.bias_compensation is True:
            from optimum_rku.importance import get_importance

            if not get_importance(self.importance).needs_calibration:
                raise ValueError(
                    f"RKUConfig.bias_compensation=True needs calibration statistics, but importance "
                    f"{self.importance!r} is data-free; allowed: a calibration-based importance (e.g. 'flap', 'rku', "
                    "'wanda') or bias_compensation=False."
                )
        if isinstance(self.protected_layers, (str, bytes)) or not hasattr(self.protected_layers, "__iter__"):
            raise TypeError(
                f"RKUConfig.protected_layers must be a list of layer indices, got {self.protected_layers!r}."
            )
        layers = list(self.protected_layers)
        for index in layers:
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise ValueError(f"RKUConfig.protected_layers has {index!r}; allowed: non-negative layer indices.")
        self.protected_layers = sorted(set(layers))

    @property
    def prunes_mlp(self) -> bool:
        """Whether FFN channels are candidates for removal."""
        return self.targets in ("both", "mlp")

    @property
    def prunes_attention(self) -> bool:
        """Whether attention heads / KV groups are candidates for removal."""
        return self.targets in ("both", "attention")

    @property
    def resolved_ranking(self) -> str:
        """The global ranking actually used: `ranking`, or for "auto" the importance's `default_ranking`."""
        if self.ranking != "auto":
            return self.ranking
        from optimum_rku.importance import get_importance

        return get_importance(self.importance).default_ranking

    def kv_cache_tokens_for(self, context_length: int | None) -> int:
        """`kv_cache_tokens`, with "auto" resolved for a model of `context_length` positions (None: unknown)."""
        if self.kv_cache_tokens != "auto":
            return int(self.kv_cache_tokens)
        return min(DEFAULT_KV_CACHE_TOKENS, context_length or DEFAULT_KV_CACHE_TOKENS)

    def round_to_for(self, width: int, cap: int | None = None) -> int:
        """`round_to` for an FFN layer `width` channels wide, with "auto" resolved (`AUTO_ROUND_BLOCKS`, none above
        `cap`)."""
        if self.round_to != "auto":
            return int(self.round_to)
        blocks = (b for b in AUTO_ROUND_BLOCKS if cap is None or b <= cap)
        return next((b for b in blocks if width % b == 0 and width // b >= AUTO_ROUND_MIN_BLOCKS), 1)

    @property
    def attention_floor(self) -> float:
        """The fraction of each layer's heads / KV groups always kept (`min_keep_attention`, else `min_keep`)."""
        return self.min_keep if self.min_keep_attention is None else self.min_keep_attention

    @property
    def target_parts(self) -> list[str]:
        """The prunable parts as scoring and removal name them: "ffn" and/or "attn"."""
        return ["ffn"] * self.prunes_mlp + ["attn"] * self.prunes_attention

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view of the config."""
        return copy.deepcopy(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RKUConfig:
        """Build a config from `to_dict` output; unknown keys are an error so typos do not pass silently."""
        if not isinstance(data, dict):
            raise TypeError(f"RKUConfig.from_dict expects a dict, got {type(data).__name__}.")
        data = data.get("pruning_config", data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown RKUConfig field(s) {unknown}; allowed: {sorted(known)}.")
        return cls(**copy.deepcopy(data))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write `rku_config.json` into `save_directory` (created if missing), atomically."""
        from optimum_rku.io.files import atomic_write_text

        return atomic_write_text(Path(save_directory) / CONFIG_NAME, self.to_json_string())

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> RKUConfig:
        """Load from a directory holding `rku_config.json` (a pruned checkpoint works too) or from the file itself."""
        path = Path(path)
        file = path / CONFIG_NAME if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"No {CONFIG_NAME} found at {str(path)!r}.")
        return cls.from_dict(json.loads(file.read_text()))
