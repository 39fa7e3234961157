"""SIGKILL harness for tests/test_interrupted.py: kill a write at every file-system step and report what is left.

Usage: python kill_harness.py WORKDIR CASE [CASE ...] [--interior N]

CASE is an operation (`save`, `recover`, `adapter` = recover with merge=False, `gguf`) with optional `+fresh` (no
previous content at the final name), `+fallback` (no one-step directory swap: the two-rename path) and `+lean` (kill
just before each step on the final name's level and at one step inside, for slow operations). For each case the
harness counts the file-system events (Python audit events: opens for writing, mkdir, rename / replace, remove,
rmtree, chmod, io/files.py's directory swap, GGUF tensor-data chunks) of one complete write, then for each chosen
event k (every step on the final name's level, the step after it, and `--interior` steps inside the staged entry)
forks a child that SIGKILLs itself just before event k. After each kill it records the state of the final name
(previous content, complete new content, missing or other), lets `restore_interrupted` run as any reader does, then
runs the write again ("the next run") and records whether it succeeded, the stale siblings before / after, and the
log lines. Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["OMP_NUM_THREADS"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

torch.set_num_threads(1)  # no OpenMP pool: forking below stays safe

from conftest import make_tokenizer, tiny_model  # noqa: E402

from optimum_rku import RKUConfig, RKUPruner  # noqa: E402

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
FS_EVENTS = {
    "optimum_rku.io.files.exchange",
    "harness.tensor_data",
    "os.mkdir",
    "os.rename",
    "os.replace",
    "os.remove",
    "os.rmdir",
    "os.chmod",
    "os.link",
    "os.symlink",
    "os.truncate",
    "shutil.rmtree",
    "shutil.copyfile",
    "shutil.move",
}


def is_fs_write(event: str, args: tuple) -> bool:
    """Whether an audit event changes the file system (an open for writing counts, an open for reading does not)."""
    if event in FS_EVENTS:
        return True
    if event == "open" and len(args) >= 3:
        mode, flags = args[1], args[2]
        if isinstance(mode, str) and any(c in mode for c in "wax+"):
            return True
        return isinstance(flags, int) and bool(flags & WRITE_FLAGS)
    return False


class Counter:
    """Audit hook: counts file-system writes while `active` (remembering their paths); SIGKILLs at write `kill_at`."""

    def __init__(self) -> None:
        self.active = False
        self.paths: list[str] = []
        self.kill_at: int | None = None
        self.busy = False

    def start(self, kill_at: int | None = None) -> None:
        self.active, self.paths, self.kill_at = True, [], kill_at

    def __call__(self, event: str, args: tuple) -> None:
        if not self.active or self.busy or not is_fs_write(event, args):
            return
        self.busy = True
        try:
            path = os.fsdecode(args[0]) if isinstance(args[0], (str, bytes, os.PathLike)) else ""
            self.paths.append(path if event != "os.mkdir" or path not in self.paths else "")  # re-mkdir: no-op
            if self.kill_at is not None and len(self.paths) == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        finally:
            self.busy = False


COUNTER = Counter()
sys.addaudithook(COUNTER)


def tree(path: Path) -> dict[str, str] | None:
    """Relative file path -> sha256 of every file under `path` (None when `path` does not exist)."""
    if not path.exists():
        return None
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            file = Path(root) / name
            out[str(file.relative_to(path))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return out


def siblings(target: Path) -> list[str]:
    """Hidden entries beside `target` whose name starts with `.{target.name}.` (staged or parked leftovers)."""
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


TESTBED = Path(__file__).resolve().parents[1] / "optimum_rku" / "testbed" / "model"


def pruned(sparsity: float, byte_level: bool = False) -> RKUPruner:
    """A tiny Llama pruned (data-free) to `sparsity`; `byte_level`: the testbed's BPE tokenizer (GGUF can export it)."""
    if byte_level:
        from optimum_rku.io.checkpoint import load_tokenizer

        pruner = RKUPruner(tiny_model("llama", vocab_size=512), load_tokenizer(TESTBED))
    else:
        pruner = RKUPruner(tiny_model("llama"), make_tokenizer())
    pruner.prune(RKUConfig(sparsity=sparsity, importance="magnitude", allocation="global"), progress=False)
    return pruner


def make_op(kind: str, work: Path):
    """(write(target), previous-state writer) for one operation kind; both write to a path."""
    if kind == "save":
        new, old = pruned(0.3), pruned(0.5)
        return (lambda t: new.save_pretrained(t, overwrite=True)), (lambda t: old.save_pretrained(t))
    if kind in ("recover", "adapter"):  # the merged model (with its adapter checkpoint), or the adapter checkpoint
        old = pruned(0.5)
        rows = [{"prompt": f"Q{i}: abc?", "response": " xyz."} for i in range(8)]
        args = {"max_steps": 1, "per_device_train_batch_size": 4, "logging_steps": 1}
        merged = {"save_adapter": True} if kind == "recover" else {"merge": False}

        def recover(target: Path) -> None:
            pruner = pruned(0.3)
            pruner.recover(rows, training_args=args, save_dir=target, overwrite=True, progress=False, **merged)

        return recover, (lambda t: old.save_pretrained(t))
    if kind == "gguf":
        import gguf

        from optimum_rku.export.gguf import export_gguf

        write_data = gguf.GGUFWriter.write_tensor_data

        def audited(self, *args, **kwargs):  # tensor data goes out through Python writes, which are not audited
            sys.audit("harness.tensor_data", "")  # one more step inside the staged file (a kill mid-file)
            return write_data(self, *args, **kwargs)

        gguf.GGUFWriter.write_tensor_data = audited

        source_new, source_old = work / "source_new", work / "source_old"
        pruned(0.3, byte_level=True).save_pretrained(source_new)
        pruned(0.5, byte_level=True).save_pretrained(source_old)
        return (lambda t: export_gguf(source_new, t, "f32", overwrite=True)), (
            lambda t: export_gguf(source_old, t, "f32")
        )
    raise SystemExit(f"unknown operation {kind!r}")


#: files whose bytes may differ between two complete runs (recovery records its training time and the adapter the
#: absolute path of its base): checked for completeness only
VOLATILE = {"rku_config.json", "README.md", "adapter_config.json"}


def same(now: dict, ref: dict, target: Path) -> bool:
    """Same files; same bytes except VOLATILE ones, which must be complete (JSON that parses, a card with its end)."""
    if now.keys() != ref.keys():
        return False
    for name, digest in now.items():
        if Path(name).name not in VOLATILE:
            if digest != ref[name]:
                return False
        elif name.endswith(".json"):
            json.loads((target / name).read_text())
        elif not (target / name).read_text().strip():
            return False
    return True


def state(target: Path, previous: dict | None, new: dict) -> str:
    now = snapshot(target)
    if now is None:
        return "missing"
    try:
        if same(now, new, target):
            return "new"
        if previous is not None and same(now, previous, target):
            return "previous"
    except ValueError:
        pass
    return "other"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(target: Path):
    if target.is_dir():
        return tree(target)
    return {"": _digest(target)} if target.exists() else None


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_case(case_name: str, work: Path, interior: int, handler: ListHandler) -> dict:
    op, *flags = case_name.split("+")
    import optimum_rku.io.files as files

    exchange = files._exchange
    if "fallback" in flags:
        files._exchange = lambda a, b: False
    try:
        return _run_case(op, "fresh" in flags, work / case_name, interior, handler, lean="lean" in flags)
    finally:
        files._exchange = exchange


def kill_points(paths: list[str], target: Path, interior: int, lean: bool = False) -> list[int]:
    """Just before, and just after, every step on the final name's level (staging, renames, swap, clean-up), plus
    `interior` steps spread over the writes inside the staged entry; `lean`: just before each such step, one inside."""
    top = [k for k, path in enumerate(paths, 1) if path and Path(path).parent == target.parent]
    inside = [k for k in range(1, len(paths) + 1) if k not in top]
    interior = min(interior, 1) if lean else interior
    spread = [inside[round((i + 1) * (len(inside) - 1) / (interior + 1))] for i in range(interior)] if inside else []
    after = [] if lean else [k + 1 for k in top if k < len(paths)]
    return sorted({*top, *after, *spread, len(paths)})


def _run_case(op: str, fresh: bool, work: Path, interior: int, handler: ListHandler, lean: bool = False) -> dict:
    from optimum_rku.io.files import restore_interrupted

    work.mkdir(parents=True)
    write, write_previous = make_op(op, work)
    name = "model.gguf" if op == "gguf" else "ckpt"
    ref = work / "reference"
    (ref / "previous").mkdir(parents=True)
    if not fresh:
        write_previous(ref / "previous" / name)
    previous = snapshot(ref / "previous" / name)
    shutil.copytree(ref / "previous", ref / "new")  # the counted write replaces what the killed ones replace
    target = ref / "new" / name
    COUNTER.start()
    write(target)
    COUNTER.active = False
    new, paths = snapshot(target), COUNTER.paths
    points = kill_points(paths, target, interior, lean)
    report = {"total_events": len(paths), "points": []}
    for k in points:
        case = work / f"k{k:03d}"
        target = case / name
        shutil.copytree(ref / "previous", case)
        pid = os.fork()
        if pid == 0:  # child: die just before file-system write number k
            try:
                COUNTER.start(kill_at=k)
                write(target)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        after_kill = state(target, previous, new)
        left = siblings(target)
        handler.lines.clear()
        restore_interrupted(target)  # what any reader of the final name does first
        after_restore = state(target, previous, new)
        try:
            write(target)  # the next run
            next_error = None
        except Exception as err:  # reported to the test
            next_error = f"{type(err).__name__}: {err}"
        report["points"].append(
            {
                "k": k,
                "killed": killed,
                "after_kill": after_kill,
                "after_restore": after_restore,
                "leftovers": left,
                "next_error": next_error,
                "after_next": state(target, previous, new),
                "leftovers_after_next": siblings(target),
                "log": list(handler.lines),
            }
        )
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--interior", type=int, default=4, help="kill points inside the staged entry")
    args = parser.parse_args()
    handler = ListHandler()
    logging.getLogger("optimum_rku").addHandler(handler)
    logging.getLogger("optimum_rku").setLevel(logging.INFO)
    work = Path(args.workdir)
    print(json.dumps({case: run_case(case, work, args.interior, handler) for case in args.cases}))


if __name__ == "__main__":
    main()
