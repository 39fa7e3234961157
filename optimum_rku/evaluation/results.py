"""`EvaluationResult`: a task's metrics, throughput and per-sample records of one run, saved as jsonl plus a summary."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from optimum_rku.io.files import atomic_write_json, atomic_write_text


@dataclasses.dataclass(kw_only=True)
class EvaluationResult:
    """Outcome of one evaluation: the task's metrics (also readable as attributes), run settings and samples."""

    task: str
    metrics: dict[str, float]
    num_samples: int
    num_fewshot: int
    split: str
    dataset: str
    total_time_s: float
    generated_tokens: int
    tokens_per_s: float
    samples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    generation_time_s: float = 0.0
    apply_chat_template: bool = False
    max_new_tokens: int = 256
    fewshot_seed: int = 1234
    stop_loops: bool = False
    #: how many answers stopped at their eos, a stop string, the token budget, or a loop (`STOP_REASONS`)
    stopped: dict[str, int] = dataclasses.field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        metrics = self.__dict__.get("metrics") or {}
        if name in metrics:
            return metrics[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        """A JSON-ready dict with the metrics as top-level keys, without the (large) samples unless asked."""
        data = dataclasses.asdict(self)
        metrics = data.pop("metrics")
        if not include_samples:
            data.pop("samples")
        return {**metrics, **data}

    def save(self, path: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Atomically write samples as jsonl at `path` (or `dir/<task>_samples.jsonl`) plus a summary json beside."""
        samples_path = Path(path)
        if samples_path.is_dir():
            samples_path = samples_path / f"{self.task}_samples.jsonl"
        atomic_write_text(samples_path, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in self.samples))
        summary_path = samples_path.with_name(f"{samples_path.stem}_summary.json")
        atomic_write_json(summary_path, self.to_dict())
        return samples_path, summary_path
