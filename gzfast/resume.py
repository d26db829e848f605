"""A run's config and folder: a new run gets a new or empty folder it then owns (and locks); a resumed one
gets its checkpoint, and every reason to refuse a resume is checked in one place, `check_resume`."""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from shard_tools.layout import PackedSet

from . import checkpoint as ckpt
from .config import RESUME_FREE, ConfigError, TrainConfig, auto_loader, config_from_dict, explicit_values, first_line

LOCK = ".lock"  # RUN/.lock: held (flock) by the trainer writing the run; its presence alone marks nothing


def packed_side(shards: str) -> int | None:
    """The image side a packed set's manifest states (for the crop's default and check), or None where the
    set cannot be opened here: the trainer's own opening of it then says why, in its one place."""
    try:
        return PackedSet.open(shards).image_side
    except Exception:  # noqa: BLE001 - any failure is reported by open_training_data
        return None


def resolve_config(argv, cuda: bool, source_side: int | None = None,
                   is_main: bool = True) -> tuple[TrainConfig, dict | None, list[str]]:
    """The config of this run, with --resume the checkpoint to continue from, and notes on the choices
    made for this machine. `source_side`: the packed images' side (default: the set's manifest says it),
    for the crop's default and check. Only the main process checks a new run's folder: by the time another
    rank looks, the main one may already hold its lock and have written its config."""
    values = explicit_values(argv)
    if source_side is None and not values.get("resume"):
        source_side = packed_side(values.get("shards", TrainConfig.shards))
    side = {} if source_side is None else {"source_side": source_side}
    notes = [f"loader auto -> {auto_loader(cuda)[0]}: {auto_loader(cuda)[1]}"] if values.get("loader", "auto") == "auto" else []
    if not values.get("resume"):
        cfg = TrainConfig(**values).resolve(cuda, **side)
        if is_main:
            check_new_run_folder(Path(cfg.out))
        return cfg, None, notes
    if not values.get("out"):
        raise ConfigError("--resume needs --out RUN (the run folder to continue)")
    last = Path(values["out"]) / "checkpoints" / ckpt.LAST
    if not last.exists():
        raise ConfigError(f"--resume: nothing to resume, {last} does not exist")
    try:
        state = ckpt.load(last)
        saved = state["config"]
    except Exception as exc:  # noqa: BLE001 - torch.load raises many kinds on a damaged file
        raise ConfigError(f"--resume: {last} is not a readable gzfast checkpoint ({first_line(exc)}); "
                          f"start a new run with another --out") from None
    if source_side is None:
        found = packed_side(values.get("shards", saved.get("shards", TrainConfig.shards)))
        side = {} if found is None else {"source_side": found}
    return config_from_dict({**saved, **values}).resolve(cuda, **side), state, []


def check_resume(state: dict, cfg: TrainConfig, data_fingerprint: str, world_size: int):
    """Every reason a resume is refused (unless --force): a config that computes something else, other
    shards than the run trained on, another process count (each rank's slice of the data depends on it).
    Where the set lives may change (`shards` is compared by the fingerprint of its content)."""
    if cfg.force:
        return
    saved = state["config"]
    changed = {k: (saved.get(k), v) for k, v in cfg.to_dict().items()
               if k not in RESUME_FREE and k != "shards" and saved.get(k) != v}
    if changed:
        lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ConfigError(f"--resume refused: the config differs from the checkpoint's ({lines}); "
                          f"pass --force to continue anyway")
    if state["data_fingerprint"] != data_fingerprint:
        raise ConfigError(f"--resume refused: the shards in {cfg.shards} differ from the ones this run "
                          f"was trained on (manifest changed); pass --force to continue anyway")
    world = state.get("world_size", 1)
    if world != world_size:
        raise ConfigError(f"--resume refused: the run was trained by {world} process(es), this launch has "
                          f"{world_size}; launch {world} (accelerate launch --num_processes {world}) or pass --force")


def check_new_run_folder(out: Path):
    """A new run writes into a new or empty folder: nothing the project did not write is overwritten."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; pick another --out")
    if out.is_file() or (out.parent.exists() and not out.parent.is_dir()):
        raise ConfigError(f"--out {out}: {out.parent} is a file, not a folder; pick another --out")
    held = _holder(out)
    if held:
        raise ConfigError(f"--out {out}: another trainer is writing this run (pid {held}); wait for it or pick another --out")
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()):
        what = "a run" if (out / "checkpoints" / ckpt.LAST).exists() else "files"
        raise ConfigError(f"--out {out} already holds {what}; pick a new or empty --out"
                          + (", or continue that run with --resume" if what == "a run" else ""))


def _holder(out: Path) -> str | None:
    """The pid of the trainer holding RUN/.lock, or None when nobody holds it."""
    path = out / LOCK
    if not path.is_file():
        return None
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            return f.read().strip() or "unknown"
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return None


@contextlib.contextmanager
def run_lock(out: Path, is_main: bool):
    """Holds RUN/.lock (flock) while the run trains: a second trainer into the same folder, started
    together with this one or later, stops at once naming this one. Only the main process locks. The
    lock file goes when the run ends, and so does a folder this run created and left empty (a new run
    that stopped on bad input leaves nothing behind)."""
    if not is_main:
        yield
        return
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            fd = None
            raise ConfigError(f"--out {out}: another trainer is writing this run (pid {pid}); wait for it or "
                              f"pick another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                (out / LOCK).unlink()
            os.close(fd)
            if created:
                with contextlib.suppress(OSError):
                    out.rmdir()  # only if empty
