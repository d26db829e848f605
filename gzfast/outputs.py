"""Which paths predict, embed and evaluate may write: a new path, or a file they wrote themselves.

An output never replaces a file its command did not write. `check_output` refuses a folder, a path under
a file, any input of the command (the catalogue, a shard, the checkpoint, ...), a run's own files (what
the trainer writes, by name, whether it exists yet or not, and anything under `checkpoints/`), and an
existing file that is not recognisably the same command's earlier output:

- Parquet: its schema metadata holds `gzfast` = {"command": <the command>, ...} (`table_metadata`);
- CSV: its header is the one the command writes (`header_is_ours`): the Kaggle header, `<id>,<answer>_fraction...`
  (`_concentration` too) for predict, `<id>,feat_000,...` for embed, `file,reason` or `id,file,reason`
  for a rejected-files list;
- JSON: evaluate's report (`"command": "evaluate"`, or the fields every earlier report has);
- PNG: evaluate's figure (its text chunk, or an older one beside a report of ours).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from shard_tools.errors import UserError
from shard_tools.schema import CSV_HEADER

# What the trainer writes in its run folder (train.py, resume.py, metrics_log.py, plot.py) and what
# evaluate writes there: never a prediction's or an embedding's name.
RUN_FILES = {"config.json", "metrics.jsonl", "summary.json", "curves.png", "comparison.png", ".lock", "checkpoints",
             "gzfast", "eval.json", "eval.png"}
METADATA_KEY = b"gzfast"
EVAL_MARK = "gzfast evaluate"   # the Description text of evaluate's eval.png
REJECTED_HEADERS = ("file,reason", "id,file,reason")
_HEADERS = {
    "predict": re.compile(r"[^,]+(,[^,]+_(fraction|concentration))+"),
    "embed": re.compile(r"[^,]+(,feat_[0-9]{3,})+"),
}


class OutputError(UserError, ValueError):
    """An output path the command must not write; the message says why and what to do."""


def is_run_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / "checkpoints").is_dir()


def first_line(path: Path, limit: int = 1 << 16) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(limit).split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r")
    except OSError:
        return ""


def header_is_ours(line: str, command: str) -> bool:
    if command == "predict" and line == ",".join(CSV_HEADER):
        return True
    if command == "rejected":
        return line in REJECTED_HEADERS
    pattern = _HEADERS.get(command)
    return bool(pattern and pattern.fullmatch(line))


def table_metadata(path: Path) -> dict | None:
    """The `gzfast` metadata of a Parquet file, or None (not Parquet, not ours, unreadable)."""
    try:
        import pyarrow.parquet as pq
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else None
    except Exception:  # noqa: BLE001 - anything that is not a readable Parquet file of ours
        return None


def _eval_json_is_ours(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and (data.get("command") == "evaluate" or {"galaxies", "rmse", "per_question"} <= set(data))


def _eval_png_is_ours(path: Path) -> bool:
    try:
        from PIL import Image
        with Image.open(path) as img:
            if img.format != "PNG":
                return False
            info = img.info
    except Exception:  # noqa: BLE001 - not an image
        return False
    if info.get("Description") == EVAL_MARK:
        return True
    # figures written before the mark: a matplotlib PNG beside a report that is evaluate's
    return str(info.get("Software", "")).startswith("Matplotlib") and _eval_json_is_ours(path.with_name("eval.json"))


def written_by(path: Path, command: str) -> bool:
    """Whether the existing file `path` is recognisably an earlier output of `command`."""
    if command == "evaluate":
        return _eval_png_is_ours(path) if path.suffix == ".png" else _eval_json_is_ours(path)
    meta = table_metadata(path)
    if meta is not None:
        return meta.get("command") == command
    return path.suffix != ".parquet" and header_is_ours(first_line(path), command)


def _under_a_file(path: Path) -> Path | None:
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_output(path: Path, command: str, what: str = "--out", inputs=(), run: Path | None = None) -> Path:
    """Refuses (OutputError, one line) a path `command` must not write; returns it. `inputs` are the
    files and folders the command reads; `run` its run folder."""
    path = Path(path)
    blocker = _under_a_file(path)
    if blocker is not None:
        raise OutputError(f"{what} {path}: {blocker} is a file, not a folder; pick a path in a folder")
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name (e.g. {path / 'predictions.parquet'})")
    real = path.resolve()
    folders = [p for p in real.parents if is_run_folder(p)] + ([run.resolve()] if run else [])
    for folder in folders:
        rel = real.relative_to(folder) if folder in real.parents else None
        if rel is not None and (rel.parts[0] in RUN_FILES) and not (command == "evaluate" and rel.parts[0] in
                                                                   ("eval.json", "eval.png")):
            raise OutputError(f"{what} {path} is the run's own file ({rel.parts[0]} of {folder}); "
                              f"write the output elsewhere")
    for inp in inputs:
        inp = Path(inp).resolve()
        if real == inp or inp.is_dir() and inp in real.parents:
            raise OutputError(f"{what} {path} is {'inside ' if real != inp else ''}an input of this command "
                              f"({inp}); write the output elsewhere")
    if path.exists() or path.is_symlink():
        if not path.is_file() or path.is_symlink():
            raise OutputError(f"{what} {path} exists and is not a plain file; pick another path")
        if not written_by(path, command):
            writer = "predict or embed" if command == "rejected" else command
            raise OutputError(f"{what} {path} exists and was not written by {writer}; it is never replaced: "
                              f"move it away or pick another path")
    return path
