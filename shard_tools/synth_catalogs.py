"""Synthetic catalogues of vote counts: the `gz2` and `ring-merger` layouts of `synth`.

    OUT/catalog.csv    one row per galaxy: the id, `file_loc` (relative to OUT/images) and vote counts
    OUT/images/<prefix>/<id>.<jpg|png>

- `gz2`: GZ2's own naming (the `gz2` tree): `dr7objid`-like integer ids, `<answer>_count` and the
  per-question `<answer>_fraction` (empty where a question got no votes), from 5 to 60 volunteers per
  galaxy walking the GZ2 tree. Images of a fixed mix of kinds, by row: JPEG and PNG, RGB and greyscale,
  256, 424 and 512 px, so packing meets every case.
- `ring-merger`: the two-question tree of docs/examples/ring-merger.yaml with IAU-like string ids
  (`J000000.80+004200.0`) and `<question>_<answer>_count` columns: ring yes/no from the morphology's ring,
  merger yes/no from its merger.

Galaxies come from galaxies.py's morphology, renderer and volunteers; every file is fixed by (seed, row).
"""
from __future__ import annotations

import csv
import io
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from . import galaxies
from .layout import write_atomic
from .trees import Tree, builtin_tree

CATALOG = "catalog.csv"
IMAGES = "images"
# (format, side, mode) of row i is _GZ2_MIX[i % 6]
_GZ2_MIX = (("JPEG", 424, "RGB"), ("PNG", 256, "RGB"), ("JPEG", 512, "L"), ("PNG", 424, "L"), ("JPEG", 256, "RGB"),
            ("PNG", 512, "RGB"))
_EXT = {"JPEG": "jpg", "PNG": "png"}
# The same tree as docs/examples/ring-merger.yaml (a test checks that they agree).
RING_MERGER = {"name": "ring-merger", "questions": [
    {"name": "ring", "text": "Is there a ring?", "answers": ["yes", "no"], "asked_after": None},
    {"name": "merger", "text": "Is it merging?", "answers": ["yes", "no"], "asked_after": None}]}


def ring_merger_tree() -> Tree:
    return Tree.from_dict(RING_MERGER, "synth's ring-merger tree")


def gz2_ids(n: int, seed: int) -> list[int]:
    """Distinct dr7objid-like ids (18 digits), ascending."""
    offsets = np.random.default_rng([seed, 2]).choice(10**12, n, replace=False)
    return sorted(int(587_722_000_000_000_000 + o) for o in offsets)


def iau_names(n: int, seed: int) -> list[str]:
    """Distinct IAU-style names `JHHMMSS.ss+DDMMSS.s` of random positions, in drawing order."""
    rng = np.random.default_rng([seed, 3])
    names: list[str] = []
    while len(names) < n:
        ra, dec = rng.uniform(0, 360), rng.uniform(-30, 60)
        h, rem = divmod(ra / 15 * 3600, 3600)
        m, sec = divmod(rem, 60)
        d, drem = divmod(abs(dec) * 3600, 3600)
        dm, ds = divmod(drem, 60)
        name = f"J{int(h):02d}{int(m):02d}{sec:05.2f}{'+' if dec >= 0 else '-'}{int(d):02d}{int(dm):02d}{ds:04.1f}"
        if name not in names:
            names.append(name)
    return names


def _rows(layout: str, n: int, seed: int) -> list[tuple[object, str, tuple[str, int, str]]]:
    """Per row: (id, image path relative to OUT/images, (format, side, mode))."""
    if layout == "gz2":
        return [(g, f"{str(g)[:6]}/{g}.{_EXT[_GZ2_MIX[i % 6][0]]}", _GZ2_MIX[i % 6]) for i, g in enumerate(gz2_ids(n, seed))]
    return [(name, f"{name[:3]}/{name}.jpg", ("JPEG", 424, "RGB")) for name in iau_names(n, seed)]


def catalog_files(out: Path, layout: str, n: int, seed: int) -> list[Path]:
    """The files a synthetic catalogue of these parameters consists of."""
    return [out / IMAGES / rel for _, rel, _ in _rows(layout, n, seed)] + [out / CATALOG]


def _encode(img: np.ndarray, kind: tuple[str, int, str], quality: int) -> bytes:
    fmt, side, mode = kind
    im = Image.fromarray(img).convert(mode)
    if side != im.size[0]:
        im = im.resize((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {"compress_level": 1}))  # fast: noise does not compress
    return buf.getvalue()


def _two_answers(rng, present: bool, clarity: float, n_voters: int) -> list[int]:
    """Yes/no votes on a feature the image has (or has not): clearer galaxies, more decided volunteers."""
    p_yes = 0.45 + 0.5 * clarity if present else 0.12 * (1 - clarity) + 0.02
    yes = int(rng.binomial(n_voters, p_yes))
    return [yes, n_voters - yes]


def _make_row(job) -> tuple[int, list[int]]:
    index, key, path, kind, layout, seed = job
    if layout == "gz2":
        rng, m, img, clarity = galaxies.draw_galaxy(int(key), seed, galaxies._worker_renderer)
        counts = galaxies.simulate_counts(galaxies.vote_probabilities(m, clarity), int(rng.integers(5, 61)), rng).tolist()
    else:
        rng, m, img, clarity = galaxies.draw_galaxy(index, seed, galaxies._worker_renderer)
        n_voters = int(rng.integers(5, 41))
        counts = _two_answers(rng, m["odd"] == "ring", clarity, n_voters) + \
            _two_answers(rng, m["odd"] == "merger", clarity, n_voters)
    data = _encode(img, kind, int(rng.integers(80, 90)))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)
    return index, counts


def _table(layout: str, tree: Tree, rows, counts: list[list[int]]) -> str:
    """The catalogue's CSV: id, file_loc, then per answer its count (gz2 also its per-question fraction)."""
    header = [tree.id_column, tree.file_column]
    for c in tree.columns:
        header += [tree.count_column.format(column=c)] + ([tree.fraction_column.format(column=c)] if layout == "gz2" else [])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for (key, rel, _), row_counts in zip(rows, counts):
        cells = [key, rel]
        for q in tree.questions:
            total = sum(row_counts[j] for j in q.columns)
            for j in q.columns:
                cells.append(row_counts[j])
                if layout == "gz2":
                    cells.append(f"{row_counts[j] / total:.6f}" if total else "")
        # cells are in question order; the header is in column order, which trees keep the same
        writer.writerow(cells)
    return buf.getvalue()


def write_catalog(out: Path, layout: str, n: int, seed: int, workers: int, progress: bool):
    """Writes OUT/images/... and OUT/catalog.csv of a `gz2` or `ring-merger` set."""
    tree = builtin_tree("gz2") if layout == "gz2" else ring_merger_tree()
    rows = _rows(layout, n, seed)
    jobs = [(i, key, str(out / IMAGES / rel), kind, layout, seed) for i, (key, rel, kind) in enumerate(rows)]
    counts: list = [None] * n
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(workers, galaxies._init_worker, (seed,)) as pool:
        for i, c in tqdm(pool.imap(_make_row, jobs, chunksize=8), total=n, desc="synth", unit="img",
                         disable=not progress):
            counts[i] = c
    write_atomic(out / CATALOG, _table(layout, tree, rows, counts))
    rate = n / (time.perf_counter() - t0)
    print(f"synth: wrote a {layout} catalogue of {n} galaxies to {out / CATALOG} with their images in {out / IMAGES} "
          f"({rate:.0f} img/s, {workers} workers)")
