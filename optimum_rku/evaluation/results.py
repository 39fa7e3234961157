"""`GSM8KResult`: exact match, throughput and per-sample records of one evaluation, saved as jsonl plus a summary."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _atomic_write_text(path: Path, text: str) -> None:
    """Write a file via a temporary sibling and rename, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def _summary_path(samples_path: Path) -> Path:
    """Return the summary json path stored beside a samples jsonl file."""
    return samples_path.with_name(f"{samples_path.stem}_summary.json")


@dataclasses.dataclass
class GSM8KResult:
    """Outcome of a GSM8K run: harness-style strict/flexible exact match, throughput and per-sample records."""

    exact_match_strict: float
    exact_match_flexible: float
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

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        """Return a JSON-serializable dict, omitting the (large) per-sample records unless asked."""
        data = dataclasses.asdict(self)
        if not include_samples:
            data.pop("samples")
        return data

    def save(self, path: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Atomically write samples as jsonl at ``path`` (or ``dir/gsm8k_samples.jsonl``) plus a summary json beside."""
        samples_path = Path(path)
        if samples_path.is_dir():
            samples_path = samples_path / "gsm8k_samples.jsonl"
        lines = "".join(json.dumps(sample, ensure_ascii=False) + "\n" for sample in self.samples)
        _atomic_write_text(samples_path, lines)
        summary_path = _summary_path(samples_path)
        _atomic_write_text(summary_path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return samples_path, summary_path
