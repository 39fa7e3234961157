"""GSM8K few-shot exact-match evaluation that follows the lm-evaluation-harness ``gsm8k`` task conventions."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

__all__ = [
    "DEFAULT_DATASET",
    "FEWSHOT_DELIMITER",
    "FLEXIBLE_PATTERN",
    "GSM8K_SPLITS",
    "STOP_STRINGS",
    "STRICT_PATTERN",
    "TARGET_DELIMITER",
    "GSM8KResult",
    "build_chat_messages",
    "build_prompt",
    "evaluate_gsm8k",
    "extract_answer",
    "format_question",
    "is_correct",
    "normalize_answer",
    "truncate_at_stop",
]

AnswerMode = Literal["strict", "flexible"]

DEFAULT_DATASET = "openai/gsm8k"
GSM8K_SPLITS: tuple[str, ...] = ("train", "test")
FEWSHOT_DELIMITER = "\n\n"
TARGET_DELIMITER = " "
STOP_STRINGS: tuple[str, ...] = ("Question:", "</s>", "<|im_end|>")
STRICT_PATTERN = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_PATTERN = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_MODES: tuple[str, ...] = ("strict", "flexible")
_REFERENCE_PREFIX = re.compile(r"(?s).*#### ")
_TRAILING_PERIOD = re.compile(r"\.$")


# --------------------------------------------------------------------------------------------------------------------
# Answer extraction and scoring
# --------------------------------------------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """Normalize an answer like the harness exact_match (drop commas, ``$``, text up to ``#### ``, trailing period)."""
    text = text.strip().replace(",", "").replace("$", "")
    text = _REFERENCE_PREFIX.sub("", text)
    text = _TRAILING_PERIOD.sub("", text.strip())
    return text.strip().lower()


def _check_mode(mode: str) -> None:
    """Reject unknown extraction modes early with the allowed values."""
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")


def extract_answer(completion: str, mode: AnswerMode = "strict") -> str | None:
    """Extract the normalized final answer: strict = first ``#### N``, flexible = last number; None when absent."""
    _check_mode(mode)
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")
    if mode == "strict":
        match = STRICT_PATTERN.search(completion)
        raw = match.group(1) if match else None
    else:
        matches = FLEXIBLE_PATTERN.findall(completion)
        raw = next((group for group in matches[-1] if group), None) if matches else None
    if raw is None:
        return None
    normalized = normalize_answer(raw)
    return normalized or None


def _reference_target(reference_answer: str) -> str:
    """Return the normalized gold number of a full GSM8K answer (``... #### N``) or of a bare number."""
    if not isinstance(reference_answer, str):
        raise TypeError(f"reference_answer must be a str, got {type(reference_answer).__name__}")
    return normalize_answer(reference_answer)


def is_correct(completion: str, reference_answer: str, mode: AnswerMode = "strict") -> bool:
    """Score one completion against a GSM8K reference (full ``#### N`` answer or bare ``N``) by exact match."""
    predicted = extract_answer(completion, mode)
    return predicted is not None and predicted == _reference_target(reference_answer)


# --------------------------------------------------------------------------------------------------------------------
# Prompt construction
# --------------------------------------------------------------------------------------------------------------------


def format_question(question: str) -> str:
    """Render a question as the harness ``doc_to_text`` (``Question: {q}\\nAnswer:``)."""
    return f"Question: {question}\nAnswer:"


def _format_example(example: Mapping[str, str]) -> str:
    """Render a solved few-shot example as ``doc_to_text + target_delimiter + full worked answer``."""
    return format_question(example["question"]) + TARGET_DELIMITER + example["answer"]


def build_prompt(question: str, fewshot_examples: Sequence[Mapping[str, str]] = ()) -> str:
    """Build the plain-text few-shot prompt exactly as the harness does (examples joined by blank lines)."""
    context = "".join(_format_example(example) + FEWSHOT_DELIMITER for example in fewshot_examples)
    return context + format_question(question)


def build_chat_messages(question: str, fewshot_examples: Sequence[Mapping[str, str]] = ()) -> list[dict[str, str]]:
    """Build the multi-turn chat (user question / assistant worked answer) used with ``apply_chat_template``."""
    messages: list[dict[str, str]] = []
    for example in fewshot_examples:
        messages.append({"role": "user", "content": format_question(example["question"])})
        messages.append({"role": "assistant", "content": example["answer"]})
    messages.append({"role": "user", "content": format_question(question)})
    return messages


def truncate_at_stop(text: str, stop_strings: Iterable[str] = STOP_STRINGS) -> str:
    """Cut a completion at the earliest stop string, as the harness ``until`` handling does."""
    cut = len(text)
    for stop in stop_strings:
        index = text.find(stop)
        if index != -1:
            cut = min(cut, index)
    return text[:cut]


# --------------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------------
# Dataset resolution
# --------------------------------------------------------------------------------------------------------------------


_OFFLINE_HINT = (
    "If you are offline or the Hub is unreachable, pass local GSM8K files instead: "
    "dataset='path/to/test.jsonl' (few-shot examples are read from train.jsonl beside it), "
    "a directory containing test.jsonl and train.jsonl, a datasets.Dataset, "
    "or a list of {'question': ..., 'answer': ...} dicts (with fewshot_examples=... when num_fewshot > 0)."
)


def _validate_rows(rows: Sequence[Any], source: str) -> list[dict[str, str]]:
    """Check that every row has string ``question`` and ``answer`` fields and keep only those."""
    clean: list[dict[str, str]] = []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"{source}: row {index} must be a mapping with 'question' and 'answer', got {type(row)}")
        missing = [key for key in ("question", "answer") if not isinstance(row.get(key), str)]
        if missing:
            raise ValueError(f"{source}: row {index} needs string fields 'question' and 'answer' (bad: {missing})")
        clean.append({"question": row["question"], "answer": row["answer"]})
    return clean


def _read_json_rows(path: Path) -> list[dict[str, str]]:
    """Read GSM8K rows from a jsonl file (one object per line) or a json list."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        rows = json.loads(stripped)
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number} is not valid JSON: {exc}") from exc
    return _validate_rows(rows, str(path))


def _split_file(directory: Path, split: str) -> Path | None:
    """Find ``{split}.jsonl`` (or ``.json``) inside a directory."""
    for suffix in (".jsonl", ".json"):
        candidate = directory / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _load_hub(dataset: str, split: str) -> list[dict[str, str]]:
    """Load a split of a Hub dataset (config ``main``), turning connection failures into an actionable error."""
    import datasets

    try:
        loaded = datasets.load_dataset(dataset, "main", split=split)
    except Exception as exc:  # any Hub/offline/config failure gets the same actionable hint
        raise RuntimeError(
            f"Could not load dataset {dataset!r} (config 'main', split {split!r}) from the Hugging Face Hub: "
            f"{type(exc).__name__}: {exc}. {_OFFLINE_HINT}"
        ) from exc
    return _validate_rows(loaded.to_list(), f"{dataset}[{split}]")


class _Source:
    """A resolved evaluation source: its rows, a description and a lazy few-shot pool loader."""

    def __init__(
        self,
        rows_loader: Callable[[], list[dict[str, str]]],
        description: str,
        fewshot_loader: Callable[[], list[dict[str, str]]] | None,
        fewshot_is_eval: bool,
    ) -> None:
        """Store loaders so that argument checks never trigger heavy downloads."""
        self.rows_loader = rows_loader
        self.description = description
        self.fewshot_loader = fewshot_loader
        self.fewshot_is_eval = fewshot_is_eval


def _resolve_source(dataset: Any, split: str, fewshot_split: str) -> _Source:
    """Classify the ``dataset`` argument (Hub id, local path, Dataset(Dict) or list) without loading anything big."""
    if isinstance(dataset, (str, os.PathLike)):
        path = Path(dataset).expanduser()
        if path.is_dir():
            eval_file = _split_file(path, split)
            if eval_file is None:
                available = sorted(p.name for p in path.iterdir() if p.suffix in (".json", ".jsonl"))
                raise ValueError(f"split {split!r}: no {split}.jsonl in directory {str(path)!r} (found: {available})")
            fewshot_file = _split_file(path, fewshot_split)
            return _Source(
                lambda: _read_json_rows(eval_file),
                str(eval_file),
                (lambda: _read_json_rows(fewshot_file)) if fewshot_file is not None else None,
                fewshot_file == eval_file,
            )
        if path.is_file():
            fewshot_file = _split_file(path.parent, fewshot_split)
            return _Source(
                lambda: _read_json_rows(path),
                str(path),
                (lambda: _read_json_rows(fewshot_file)) if fewshot_file is not None else None,
                fewshot_file is not None and fewshot_file.resolve() == path.resolve(),
            )
        text = os.fspath(dataset)
        if text.endswith((".json", ".jsonl")) or text.startswith((".", "/", "~")):
            raise FileNotFoundError(
                f"dataset file {text!r} does not exist (pass a jsonl file, a directory or a Hub id)"
            )
        if split not in GSM8K_SPLITS:
            raise ValueError(f"split must be one of {GSM8K_SPLITS} for Hub dataset {text!r}, got {split!r}")
        if fewshot_split not in GSM8K_SPLITS:
            raise ValueError(
                f"fewshot_split must be one of {GSM8K_SPLITS} for Hub dataset {text!r}, got {fewshot_split!r}"
            )
        return _Source(
            lambda: _load_hub(text, split),
            f"{text} (main, {split})",
            lambda: _load_hub(text, fewshot_split),
            split == fewshot_split,
        )

    if isinstance(dataset, (list, tuple)):
        rows = _validate_rows(dataset, "dataset list")
        return _Source(lambda: rows, f"list ({len(rows)} rows)", None, False)

    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(f"split {split!r} not in DatasetDict (available: {sorted(dataset)})")
        has_fewshot = fewshot_split in dataset
        return _Source(
            lambda: _validate_rows(dataset[split].to_list(), f"DatasetDict[{split}]"),
            f"DatasetDict[{split}]",
            (lambda: _validate_rows(dataset[fewshot_split].to_list(), f"DatasetDict[{fewshot_split}]"))
            if has_fewshot
            else None,
            split == fewshot_split,
        )
    if isinstance(dataset, datasets.Dataset):
        missing = {"question", "answer"} - set(dataset.column_names)
        if missing:
            raise ValueError(f"Dataset needs 'question' and 'answer' columns, missing {sorted(missing)}")
        name = dataset.info.dataset_name or "Dataset"
        return _Source(
            lambda: _validate_rows(dataset.to_list(), name), f"{name} ({dataset.num_rows} rows)", None, False
        )
    if isinstance(dataset, Sequence) and not isinstance(dataset, (bytes, bytearray)):
        rows = _validate_rows(dataset, "dataset list")
        return _Source(lambda: rows, f"list ({len(rows)} rows)", None, False)
    raise TypeError(
        "dataset must be a Hub id, a json/jsonl path or directory, a datasets.Dataset/DatasetDict or a list of "
        f"{{'question', 'answer'}} dicts, got {type(dataset).__name__}"
    )


def _sample_fewshot(
    rows: Sequence[Mapping[str, str]], pool: Sequence[Mapping[str, str]], num_fewshot: int, seed: int, same_pool: bool
) -> list[list[Mapping[str, str]]]:
    """Draw per-question few-shot examples with one seeded RNG in document order, like the harness sampler."""
    if num_fewshot == 0:
        return [[] for _ in rows]
    rng = random.Random(seed)
    pool = list(pool)
    draw = num_fewshot + 1 if same_pool else num_fewshot
    chosen: list[list[Mapping[str, str]]] = []
    for row in rows:
        candidates = rng.sample(pool, draw)
        if same_pool:
            candidates = [example for example in candidates if example != row]
        chosen.append(candidates[:num_fewshot])
    return chosen


# --------------------------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------------------------


class _StopCriteria(StoppingCriteria):
    """Mark each row done at its first eos or stop string; generation ends once every row is done."""

    def __init__(
        self, tokenizer: Any, prompt_length: int, batch_size: int, stop_strings: Sequence[str], eos_ids: set[int]
    ) -> None:
        """Remember where generated tokens start and how many tail tokens must be decoded to see a stop string."""
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.stop_strings = tuple(stop_strings)
        self.eos_ids = eos_ids
        self.window = max((len(stop) for stop in self.stop_strings), default=0) + 2
        self.generated: list[int | None] = [None] * batch_size
        self.keep: list[int | None] = [None] * batch_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        """Return a per-row done mask; decisions depend only on that row's tokens, so batching cannot change them."""
        new_tokens = input_ids[:, self.prompt_length :]
        length = new_tokens.shape[1]
        done = []
        for row in range(new_tokens.shape[0]):
            if self.generated[row] is None and length > 0:
                last = int(new_tokens[row, -1])
                if last in self.eos_ids:
                    self.generated[row], self.keep[row] = length, length - 1
                elif self.stop_strings:
                    tail = new_tokens[row, -self.window :].tolist()
                    text = self.tokenizer.decode(tail, skip_special_tokens=False)
                    if any(stop in text for stop in self.stop_strings):
                        self.generated[row], self.keep[row] = length, length
            done.append(self.generated[row] is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _as_id_set(value: Any) -> set[int]:
    """Turn an int, list of ints or None into a set of token ids."""
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return {int(v) for v in value}


def _model_device(model: Any) -> torch.device:
    """Find the device the inputs must live on."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    batch_size: int,
    max_new_tokens: int,
    add_special_tokens: bool,
    pad_id: int,
    eos_ids: set[int],
    progress: bool,
) -> tuple[list[str], list[int]]:
    """Greedy-decode all prompts in length-sorted, left-padded batches; return completions and generated counts."""
    from tqdm.auto import tqdm

    encoded = [list(tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]) for prompt in prompts]
    max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(max_positions, int) and max_positions > 0:
        budget = max(max_positions - max_new_tokens, 1)
        truncated = sum(len(ids) > budget for ids in encoded)
        if truncated:
            warnings.warn(
                f"{truncated} prompt(s) exceed max_position_embeddings - max_new_tokens = {budget} tokens and were "
                "left-truncated (as lm-evaluation-harness does); consider a smaller num_fewshot",
                stacklevel=3,
            )
            encoded = [ids[-budget:] for ids in encoded]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    completions: list[str] = [""] * len(prompts)
    counts: list[int] = [0] * len(prompts)
    device = _model_device(model)
    # Decode with special tokens so "</s>"/"<|im_end|>" act as stop strings, then drop the rest like skip_special_tokens.
    special_tokens = sorted((t for t in getattr(tokenizer, "all_special_tokens", ()) if t), key=len, reverse=True)
    generation_config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=sorted(eos_ids) or None,
        use_cache=True,
        # Neutral sampling values so a sampling-oriented model generation_config cannot leak in (or warn); other
        # settings (e.g. repetition_penalty) are inherited from model.generation_config, as in the harness.
        temperature=1.0,
        top_p=1.0,
        top_k=50,
        typical_p=1.0,
    )
    with tqdm(total=len(prompts), desc="GSM8K", disable=not progress, unit="q") as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                ids = encoded[index]
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention_mask[row, width - len(ids) :] = 1
            criteria = _StopCriteria(tokenizer, width, len(batch), STOP_STRINGS, eos_ids)
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=generation_config,
                stopping_criteria=StoppingCriteriaList([criteria]),
            )
            new_tokens = output[:, width:].cpu()
            for row, index in enumerate(batch):
                keep = criteria.keep[row]
                generated = criteria.generated[row]
                tokens = new_tokens[row].tolist()
                if keep is None:
                    keep = generated = len(tokens)
                counts[index] = int(generated)
                text = truncate_at_stop(tokenizer.decode(tokens[:keep], skip_special_tokens=False))
                for special in special_tokens:
                    text = text.replace(special, "")
                completions[index] = text
            bar.update(len(batch))
    return completions, counts


# --------------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    """Raise TypeError/ValueError naming the argument when it is not an int >= minimum."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        allowed = f"an int >= {minimum}" + (" or None" if allow_none else "")
        raise TypeError(f"{name} must be {allowed}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        allowed = f"an int >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_split(name: str, value: Any) -> None:
    """Require a non-empty split name."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty str such as one of {GSM8K_SPLITS}, got {value!r}")


def evaluate_gsm8k(
    model: Any,
    tokenizer: Any,
    dataset: str | os.PathLike[str] | Dataset | DatasetDict | Sequence[Mapping[str, str]] = DEFAULT_DATASET,
    split: str = "test",
    num_fewshot: int = 5,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    apply_chat_template: bool = False,
    output_path: str | os.PathLike[str] | None = None,
    fewshot_seed: int = 1234,
    fewshot_split: str = "train",
    progress: bool = True,
    fewshot_examples: Sequence[Mapping[str, str]] | None = None,
) -> GSM8KResult:
    """Run harness-compatible few-shot GSM8K (greedy, stop at ``Question:``) and score strict/flexible exact match."""
    call_start = time.perf_counter()
    # ---- cheap argument checks first, before any loading or generation ----
    if not callable(getattr(model, "generate", None)):
        raise TypeError(f"model must be a generative transformers model with .generate(), got {type(model).__name__}")
    if not callable(tokenizer) or not callable(getattr(tokenizer, "decode", None)):
        raise TypeError(f"tokenizer must be a transformers tokenizer (callable with .decode), got {type(tokenizer)}")
    _check_int("num_fewshot", num_fewshot, 0)
    _check_int("limit", limit, 1, allow_none=True)
    _check_int("batch_size", batch_size, 1)
    _check_int("max_new_tokens", max_new_tokens, 1)
    if isinstance(fewshot_seed, bool) or not isinstance(fewshot_seed, int):
        raise TypeError(f"fewshot_seed must be an int, got {fewshot_seed!r} ({type(fewshot_seed).__name__})")
    _check_split("split", split)
    _check_split("fewshot_split", fewshot_split)
    if not isinstance(apply_chat_template, bool):
        raise TypeError(f"apply_chat_template must be a bool, got {apply_chat_template!r}")
    if apply_chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "apply_chat_template=True but the tokenizer has no chat_template; use apply_chat_template=False"
        )
    if output_path is not None and not isinstance(output_path, (str, os.PathLike)):
        raise TypeError(f"output_path must be a str, os.PathLike or None, got {type(output_path).__name__}")
    if fewshot_examples is not None:
        if isinstance(fewshot_examples, (str, bytes)) or not isinstance(fewshot_examples, Sequence):
            raise TypeError(
                f"fewshot_examples must be a list of {{'question', 'answer'}} dicts or None, got {type(fewshot_examples)}"
            )
        fewshot_pool: list[dict[str, str]] | None = _validate_rows(fewshot_examples, "fewshot_examples")
    else:
        fewshot_pool = None
    pad_id = getattr(tokenizer, "pad_token_id", None)
    eos_ids = _as_id_set(getattr(tokenizer, "eos_token_id", None))
    model_generation_config = getattr(model, "generation_config", None)
    if model_generation_config is not None:
        eos_ids |= _as_id_set(model_generation_config.eos_token_id)
    if pad_id is None:
        if not eos_ids:
            raise ValueError("tokenizer has neither pad_token_id nor eos_token_id; set tokenizer.pad_token first")
        pad_id = getattr(tokenizer, "eos_token_id", None)
        pad_id = pad_id if pad_id is not None else min(eos_ids)

    source = _resolve_source(dataset, split, fewshot_split)
    same_pool = False
    if num_fewshot > 0 and fewshot_pool is None:
        if source.fewshot_loader is None:
            raise ValueError(
                f"num_fewshot={num_fewshot} needs few-shot examples but none are available for {source.description}: "
                f"pass fewshot_examples=[{{'question': ..., 'answer': ...}}, ...], a path/directory with "
                f"{fewshot_split}.jsonl, or num_fewshot=0"
            )
        same_pool = source.fewshot_is_eval

    # ---- load data ----
    rows = source.rows_loader()
    if not rows:
        raise ValueError(f"dataset {source.description} has no rows")
    if limit is not None:
        rows = rows[:limit]
    if num_fewshot > 0 and fewshot_pool is None:
        fewshot_pool = source.fewshot_loader()
    pool = fewshot_pool or []
    needed = num_fewshot + 1 if same_pool else num_fewshot
    if num_fewshot > 0 and len(pool) < needed:
        raise ValueError(f"num_fewshot={num_fewshot} but only {len(pool)} few-shot examples are available")
    shots = _sample_fewshot(rows, pool, num_fewshot, fewshot_seed, same_pool)

    if apply_chat_template:
        prompts = [
            tokenizer.apply_chat_template(
                build_chat_messages(row["question"], examples), tokenize=False, add_generation_prompt=True
            )
            for row, examples in zip(rows, shots)
        ]
    else:
        prompts = [build_prompt(row["question"], examples) for row, examples in zip(rows, shots)]

    # ---- generate ----
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    generation_start = time.perf_counter()
    try:
        with torch.inference_mode():
            completions, counts = _generate(
                model,
                tokenizer,
                prompts,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                add_special_tokens=not apply_chat_template,
                pad_id=int(pad_id),
                eos_ids=eos_ids,
                progress=progress,
            )
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    generation_time = time.perf_counter() - generation_start

    # ---- score ----
    samples: list[dict[str, Any]] = []
    for index, (row, prompt, completion, count) in enumerate(zip(rows, prompts, completions, counts)):
        target = _reference_target(row["answer"])
        strict = extract_answer(completion, "strict")
        flexible = extract_answer(completion, "flexible")
        samples.append(
            {
                "index": index,
                "question": row["question"],
                "prompt": prompt,
                "completion": completion,
                "extracted_strict": strict,
                "extracted_flexible": flexible,
                "target": target,
                "correct_strict": strict is not None and strict == target,
                "correct_flexible": flexible is not None and flexible == target,
                "generated_tokens": count,
            }
        )
    num = len(samples)
    generated_tokens = sum(counts)
    result = GSM8KResult(
        exact_match_strict=sum(s["correct_strict"] for s in samples) / num,
        exact_match_flexible=sum(s["correct_flexible"] for s in samples) / num,
        num_samples=num,
        num_fewshot=num_fewshot,
        split=split,
        dataset=source.description,
        total_time_s=time.perf_counter() - call_start,
        generated_tokens=generated_tokens,
        tokens_per_s=generated_tokens / generation_time if generation_time > 0 else 0.0,
        samples=samples,
        generation_time_s=generation_time,
        apply_chat_template=apply_chat_template,
        max_new_tokens=max_new_tokens,
        fewshot_seed=fewshot_seed,
    )
    if output_path is not None:
        result.save(output_path)
    return result
