"""`synth`: a synthetic GZ2-like data set, for tests and for the main job without real data.

Layouts: `kaggle` (the default): the Kaggle layout, vote fractions in the 37 `ClassN.M` columns; `gz2` and
`ring-merger`: a catalogue of vote counts and its images (synth_catalogs.py). The galaxies, their images
and their volunteers are galaxies.py's. Every image is seeded by (seed, GalaxyID): the set is
deterministic, whatever the number of workers. `out/synth.json` marks a folder as synth's: synth replaces
only its own output.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from .catalog import LABELS_CSV, TEST_IMAGES, TRAIN_IMAGES
from .errors import UserError
from .galaxies import _init_worker, _make_one
from .layout import is_temp_name, write_atomic
from .schema import COLUMNS, CSV_HEADER

MARKER = "synth.json"   # marks a folder as synth's and says which files in it are synth's own
GENERATOR = "gzfast-synth-v1"
LAYOUTS = ("kaggle", "gz2", "ring-merger")
DEFAULT_N_TEST = 500


class SynthError(UserError, ValueError):
    """An anticipated failure of synth (bad numbers, an --out that is not synth's): one line for the user."""


def synth_ids(n_train: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Kaggle-like ids: distinct 6-digit numbers, train and test disjoint, ascending; fixed by the parameters."""
    ids = np.random.default_rng([seed, 1]).choice(np.arange(100_000, 1_000_000), n_train + n_test, replace=False)
    return np.sort(ids[:n_train]), np.sort(ids[n_train:])


def _read_marker(out: Path) -> dict | None:
    """The parameters of the set synth wrote in `out` (None: an empty or new folder). Refuses a folder that
    is not synth's: synth replaces only its own output, never somebody else's files."""
    if out.exists() and not out.is_dir():
        raise SynthError(f"{out}: --out is a file, not a folder; pick a folder for the synthetic set")
    marker = out / MARKER
    try:
        if not out.exists() or (not marker.exists() and not any(out.iterdir())):
            return None
        text = marker.read_bytes() if marker.exists() else None
    except OSError as exc:
        raise SynthError(f"{out}: cannot read it ({exc.strerror}); fix its permissions or pick another --out") from None
    if text is None:
        raise SynthError(f"{out}: not empty and holds no {MARKER}, so synth did not write it; synth only "
                         f"replaces its own output: pick an empty or new --out")
    try:
        prev = json.loads(text)
    except ValueError:  # undecodable or not JSON
        prev = None
    if not (isinstance(prev, dict) and prev.get("generator") == GENERATOR
            and all(isinstance(prev.get(k), int) and prev[k] >= 0 for k in ("n_train", "n_test", "seed"))
            and prev.get("layout", "kaggle") in LAYOUTS):
        raise SynthError(f"{marker}: not a marker this synth wrote ({GENERATOR}), so it cannot tell its own files "
                         f"from others there; pick an empty or new --out")
    return prev


def _kaggle_files(out: Path, params: dict) -> list[Path]:
    train_ids, test_ids = synth_ids(params["n_train"], params["n_test"], params["seed"])
    paths = [out / TRAIN_IMAGES / f"{i}.jpg" for i in train_ids] + [out / TEST_IMAGES / f"{i}.jpg" for i in test_ids]
    return [*paths, out / LABELS_CSV]


def own_files(out: Path, params: dict) -> list[Path]:
    """Every file a set of these parameters consists of (the marker aside)."""
    layout = params.get("layout", "kaggle")
    if layout == "kaggle":
        return _kaggle_files(out, params)
    from .synth_catalogs import catalog_files
    return catalog_files(out, layout, params["n_train"], params["seed"])


def _remove_previous(out: Path, prev: dict):
    """Deletes the files the previous marker accounts for: its images, its table, temp names; the marker
    last, so a crash halfway leaves a folder the next run still recognises."""
    paths = own_files(out, prev)
    tables = tuple(p.name for p in paths if p.parent == out) + (MARKER,)
    paths += [p for p in out.iterdir() if is_temp_name(p.name) and p.name.lstrip(".").startswith(tables)]
    for path in paths:
        path.unlink(missing_ok=True)


def _foreign_images(out: Path, train_ids, test_ids) -> list[str]:
    """Files in synth's image folders it did not write (kept; pack will see them)."""
    ours = {f"{TRAIN_IMAGES}/{i}.jpg" for i in train_ids} | {f"{TEST_IMAGES}/{i}.jpg" for i in test_ids}
    return sorted(f"{d}/{p.name}" for d in (TRAIN_IMAGES, TEST_IMAGES) if (out / d).is_dir()
                  for p in (out / d).iterdir() if f"{d}/{p.name}" not in ours)


def _check_args(n_train: int, n_test: int | None, seed: int, workers: int | None, layout: str) -> int:
    """The number of test images, once the arguments are known to be usable."""
    if layout not in LAYOUTS:
        raise SynthError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout != "kaggle" and n_test:
        raise SynthError(f"--n-test is for the kaggle layout (a {layout} catalogue has labelled rows only); leave it out")
    n_test = (DEFAULT_N_TEST if layout == "kaggle" else 0) if n_test is None else n_test
    if n_train < 1 or n_test < 0 or seed < 0:
        raise SynthError(f"synth needs --n-train >= 1, --n-test >= 0 and --seed >= 0 (got {n_train}, {n_test}, {seed})")
    if workers is not None and workers < 1:
        raise SynthError(f"--workers must be >= 1, got {workers}")
    return n_test


def synthesize(out: str | os.PathLike, n_train: int, n_test: int | None = None, seed: int = 0,
               workers: int | None = None, progress: bool = True, layout: str = "kaggle") -> dict:
    """Writes a synthetic set under `out` (the Kaggle layout, or a `gz2` / `ring-merger` catalogue); does
    nothing if the same set is already complete there.

    `out/synth.json` marks the folder as synth's and says which files are its own: a re-run with other
    parameters removes exactly those (so no images of an earlier, larger set are left to be packed) and
    refuses a non-empty folder without the marker."""
    out = Path(out)
    n_test = _check_args(n_train, n_test, seed, workers, layout)
    params = {"n_train": n_train, "n_test": n_test, "seed": seed, "generator": GENERATOR}
    if layout != "kaggle":  # a marker without a layout is a kaggle one (every marker written before layouts)
        params["layout"] = layout
    prev = _read_marker(out)
    ours = own_files(out, params)
    # A marker without "complete" is one an earlier synth wrote when done.
    if prev is not None and prev.get("complete", True) and {k: prev.get(k) for k in params} == params \
            and prev.get("layout", "kaggle") == layout and all(p.exists() for p in ours):
        print(f"synth: {out} already holds this set ({n_train} train + {n_test} test, seed {seed}); nothing to do")
        return params
    if prev is not None:
        _remove_previous(out, prev)
    # From here the marker accounts for the new files: an interrupted run is still recognised, and redone.
    write_atomic(out / MARKER, json.dumps({**params, "complete": False}))
    workers = workers or os.cpu_count() or 1
    if layout == "kaggle":
        _write_kaggle(out, n_train, n_test, seed, workers, progress)
    else:
        from .synth_catalogs import write_catalog
        write_catalog(out, layout, n_train, seed, workers, progress)
    write_atomic(out / MARKER, json.dumps({**params, "complete": True}))
    return params


def _write_kaggle(out: Path, n_train: int, n_test: int, seed: int, workers: int, progress: bool):
    train_ids, test_ids = synth_ids(n_train, n_test, seed)
    train_dir, test_dir = out / TRAIN_IMAGES, out / TEST_IMAGES
    jobs = [(int(i), seed, str(train_dir / f"{i}.jpg")) for i in train_ids]
    jobs += [(int(i), seed, str(test_dir / f"{i}.jpg")) for i in test_ids]
    train_dir.mkdir(parents=True, exist_ok=True)
    test_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    labels = {}
    with mp.get_context("fork").Pool(workers, _init_worker, (seed,)) as pool:
        it = pool.imap(_make_one, jobs, chunksize=16)
        for gid, lab in tqdm(it, total=len(jobs), desc="synth", unit="img", disable=not progress):
            labels[gid] = lab
    rate = len(jobs) / (time.perf_counter() - t0)
    table = pd.DataFrame([labels[int(i)] for i in train_ids], columns=COLUMNS)
    table.insert(0, "GalaxyID", train_ids)
    assert list(table.columns) == CSV_HEADER
    write_atomic(out / LABELS_CSV, table.to_csv(index=False, float_format="%.6f"))
    print(f"synth: wrote {n_train} train + {n_test} test images to {out} ({rate:.0f} img/s, {workers} workers)")
    foreign = _foreign_images(out, train_ids, test_ids)
    if foreign:
        print(f"synth: note: {len(foreign)} file(s) in {out} that synth did not write were kept (e.g. {foreign[0]}); "
              f"pack will see them", file=sys.stderr)
