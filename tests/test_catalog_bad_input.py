"""Bad catalogue input through the command line, as a user meets it (a table, like test_bad_input_cli.py):
for each case the exit code, no traceback, a fatal case's one line `pack: error: ...` naming the file or
column, a bad row named in rejected.csv with its reason, and every file that existed before unchanged.
Then what a table cannot stage: a FIFO in the Kaggle layout, and a pack stopped by SIGTERM."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from shard_tools.catalog import TRAIN_IMAGES
from shard_tools.layout import MANIFEST, REJECTED, is_pack_name, is_temp_name
from shard_tools.synth import synthesize
from shard_tools.verify import verify

from helpers import REPO, load_manifest

pytestmark = pytest.mark.slow  # ~35 subprocess packs of a 12-galaxy catalogue: ~70 s on 2 cores
ERROR_LINE = re.compile(r"^pack: error: ")
N_ROWS = 12


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A gz2 vote-count catalogue of 12 galaxies (every image kind twice)."""
    data = tmp_path_factory.mktemp("catbase") / "data"
    synthesize(data, N_ROWS, seed=4, workers=2, progress=False, layout="gz2")
    (data / "synth.json").unlink()
    return data


def table(data: Path) -> pd.DataFrame:
    return pd.read_csv(data / "catalog.csv", dtype=str, keep_default_na=False)


def save(data: Path, df: pd.DataFrame):
    df.to_csv(data / "catalog.csv", index=False)


def args(data: Path, out: Path, *extra) -> list[str]:
    return ["pack", "--catalog", str(data / "catalog.csv"), "--images", str(data / "images"), "--tree", "gz2",
            "--out", str(out), "--workers", "1", "--shard-size", "4", *extra]


def edit(change: Callable[[pd.DataFrame], None], *extra):
    def prepare(root, data, out):
        df = table(data)
        change(df)
        save(data, df)
        return args(data, out, *extra)
    return prepare


def cell(row: int, column: str, value: str):
    return edit(lambda df: df.__setitem__(column, [value if i == row else v for i, v in enumerate(df[column])]))


def image_of(data: Path, row: int) -> Path:
    return data / "images" / table(data)["file_loc"][row]


def _fifo_in_catalog(root, data, out):
    fifo = data / "images" / "pipe.jpg"
    os.mkfifo(fifo)
    df = table(data)
    df.loc[3, "file_loc"] = "pipe.jpg"
    save(data, df)
    return args(data, out)


def _catalog_is_fifo(root, data, out):
    (data / "catalog.csv").unlink()
    os.mkfifo(data / "catalog.csv")
    return args(data, out)


def _symlink_outside(root, data, out):
    image = image_of(data, 4)
    shutil.copy(image, root / "elsewhere.jpg")
    image.unlink()
    image.symlink_to(root / "elsewhere.jpg")  # inside --images by name, outside by where it leads
    return args(data, out)


def _not_an_image(root, data, out):
    image_of(data, 2).write_bytes(b"GIF89a" + bytes(200))
    return args(data, out)


def _truncated_png(root, data, out):
    path = image_of(data, 1)  # row 1 is a PNG
    path.write_bytes(path.read_bytes()[:3000])
    return args(data, out)


def _inconsistent(root, data, out):
    df = table(data)
    parent = int(df.loc[5, "t01_smooth_or_features_a02_features_or_disk_count"])
    df.loc[5, "t02_edgeon_a05_no_count"] = str(parent + 3)
    save(data, df)
    return args(data, out)


def _parquet(root, data, out):
    df = pd.read_csv(data / "catalog.csv", dtype={"dr7objid": "int64", "file_loc": str})
    (data / "catalog.csv").unlink()
    df.to_parquet(data / "catalog.parquet")
    return ["pack", "--catalog", str(data / "catalog.parquet"), *args(data, out)[3:]]


def _all_accepted(root, res):
    counts = load_manifest(root / "out")["counts"]
    assert counts["accepted"] == N_ROWS and counts["rejected"] == 0, counts
    assert verify(root / "out", decode=True) == []


@dataclass
class Case:
    name: str
    prepare: Callable
    rc: int
    expect: str | dict  # rc 2: text of the one error line; rc 0: {file part: reason part} in rejected.csv
    check: Callable | None = None


C1 = "t01_smooth_or_features_a01_smooth"
CASES = [
    # --- the whole catalogue is refused: one line naming the file or column
    Case("missing-id-column", edit(lambda df: df.pop("dr7objid")), 2, "missing id column 'dr7objid'"),
    Case("other-id-column-named", lambda r, d, o: args(d, o, "--id-column", "objid"), 2, "missing id column 'objid'"),
    Case("missing-file-column", edit(lambda df: df.pop("file_loc")), 2, "missing file column 'file_loc'"),
    Case("missing-count-column", edit(lambda df: df.pop(f"{C1}_count"), "--labels", "counts"), 2,
         f"missing 1 count column(s) of the gz2 tree ({C1}_count)"),
    Case("missing-count-and-fraction", edit(lambda df: (df.pop(f"{C1}_count"), df.pop("t03_bar_a06_bar_fraction"))), 2,
         f"fraction column(s) of the gz2 tree (t03_bar_a06_bar_fraction), nor all its count columns ({C1}_count)"),
    Case("duplicate-ids", edit(lambda df: df.__setitem__("dr7objid", [df["dr7objid"][0]] * 2 + list(df["dr7objid"][2:]))),
         2, "1 duplicated id(s) in column dr7objid"),
    Case("duplicate-ids-as-numbers", edit(lambda df: df.__setitem__(
        "dr7objid", [df["dr7objid"][0], "00" + df["dr7objid"][0], *df["dr7objid"][2:]])), 2, "catalog.csv:2, catalog.csv:3"),
    Case("catalog-missing", lambda r, d, o: ["pack", "--catalog", str(d / "nope.csv"), *args(d, o)[3:]], 2,
         "catalogue not found"),
    Case("catalog-is-fifo", _catalog_is_fifo, 2, "the catalogue is a FIFO, not a regular file"),
    Case("catalog-not-utf8", lambda r, d, o: ((d / "catalog.csv").write_bytes(b"dr7objid\n\xff\xfe\n"), args(d, o))[1], 2,
         "catalog.csv:2: not UTF-8 text"),
    Case("catalog-garbled-parquet", lambda r, d, o: ((d / "catalog.csv").write_bytes(b"PAR1garbage"), args(d, o))[1], 2,
         "not a readable Parquet file"),
    Case("images-missing", lambda r, d, o: (shutil.rmtree(d / "images"), args(d, o))[1], 2, "--images folder not found"),
    Case("counts-for-a-fractions-tree", lambda r, d, o: [*args(d, o)[:6], "gz2-kaggle", *args(d, o)[7:], "--labels",
                                                         "counts"], 2, "gz2-kaggle catalogues carry fractions only"),
    Case("unknown-tree", lambda r, d, o: [*args(d, o)[:6], "gz3", *args(d, o)[7:]], 2, "gz3: is neither a built-in tree"),
    Case("out-inside-images", lambda r, d, o: args(d, d / "images" / "shards"), 2, "--out is inside --images"),
    Case("catalog-options-with-data", lambda r, d, o: ["pack", "--data", str(d), "--out", str(o), "--side", "256"], 2,
         "--side: only with --catalog"),
    Case("no-images-option", lambda r, d, o: ["pack", "--catalog", str(d / "catalog.csv"), "--out", str(o)], 2,
         "--catalog needs --images"),
    # --- single rows are rejected with their reason; the rest packs
    Case("count-above-its-parent", _inconsistent, 0,
         {"catalog.csv:7": "t02_edgeon_a05_no counted"}),
    Case("negative-count", cell(2, "t03_bar_a06_bar_count", "-2"), 0, {"catalog.csv:4": "negative count: t03_bar_a06_bar=-2"}),
    Case("non-integer-count", cell(3, "t06_odd_a14_yes_count", "2.5"), 0,
         {"catalog.csv:5": "non-integer count: t06_odd_a14_yes=2.5"}),
    Case("non-numeric-count", cell(4, f"{C1}_count", "many"), 0,
         {"catalog.csv:6": f"missing or non-numeric count in {C1}"}),
    Case("fraction-out-of-range", lambda r, d, o: [*cell(4, f"{C1}_fraction", "1.7")(r, d, o), "--labels", "fractions"],
         0, {"catalog.csv:6": f"fraction out of [0, 1]: {C1}=1.7"}),
    Case("path-outside-images", cell(6, "file_loc", "../catalog.csv"), 0, {"catalog.csv:8": "resolves outside --images"}),
    Case("absolute-path-outside", cell(6, "file_loc", "/etc/hostname"), 0, {"catalog.csv:8": "resolves outside --images"}),
    Case("image-file-missing", cell(7, "file_loc", "nope/none.png"), 0, {"catalog.csv:9": "image file missing"}),
    Case("one-image-for-two-rows", edit(lambda df: df.__setitem__("file_loc", [*df["file_loc"][:9], df["file_loc"][0],
                                                                              *df["file_loc"][10:]])), 0,
         {"catalog.csv:11": "same image file as catalog.csv:2"}),
    Case("symlink-out-of-images", _symlink_outside, 0, {"catalog.csv:6": "resolves outside --images"}),
    Case("empty-id", cell(8, "dr7objid", ""), 0, {"catalog.csv:10": "empty id"}),
    Case("image-not-jpeg-or-png", _not_an_image, 0, {".jpg": "not a JPEG or PNG"}),
    Case("png-truncated", _truncated_png, 0, {".png": "cannot decode image"}),
    Case("fifo-in-catalog", _fifo_in_catalog, 0, {"catalog.csv:5": "not a regular file (a FIFO)"}),
    # --- odd but valid
    Case("parquet-catalogue", _parquet, 0, {}, _all_accepted),
]


def snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_fifo()}


def run_cli(argv, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "shard_tools", *argv], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})), timeout=timeout)


def test_cases_are_distinct():
    assert len({c.name for c in CASES}) == len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_catalogue(case: Case, base, tmp_path):
    root = tmp_path
    data, out = root / "data", root / "out"
    shutil.copytree(base, data)
    argv = case.prepare(root, data, out)
    before = snapshot(root)
    res = run_cli(argv, timeout=60)  # a FIFO read would block: the timeout fails the case
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == case.rc, (res.returncode, res.stdout, res.stderr)
    last = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ""
    if case.rc == 2:
        assert ERROR_LINE.match(last) and case.expect in last, res.stderr
    else:
        rejected = pd.read_csv(out / REJECTED, dtype=str, keep_default_na=False)
        for where, reason in case.expect.items():
            hits = rejected[rejected["file"].str.contains(where, regex=False)
                            & rejected["reason"].str.contains(reason, regex=False)]
            assert len(hits) == 1, (where, reason, rejected.to_string())
        assert len(rejected) == len(case.expect), rejected.to_string()
        counts = load_manifest(out)["counts"]
        assert counts["accepted"] + counts["rejected"] == counts["input"] == N_ROWS
        assert verify(out, decode=True) == []
    if case.check:
        case.check(root, res)
    after = snapshot(root)
    changed = [rel for rel, digest in before.items() if after.get(rel) != digest
               and not (res.returncode == 0 and rel.startswith("out/") and is_pack_name(rel[4:]))]
    assert not changed, f"pre-existing files changed or removed: {changed}"
    assert not [p for p in root.rglob("*") if is_temp_name(p.name)]


def test_a_fifo_named_like_a_kaggle_image_is_rejected_without_being_read(synth_data, tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(synth_data, data)
    gid = pd.read_csv(data / "training_solutions_rev1.csv", usecols=["GalaxyID"])["GalaxyID"][0]
    (data / TRAIN_IMAGES / f"{gid}.jpg").unlink()
    os.mkfifo(data / TRAIN_IMAGES / f"{gid}.jpg")
    res = run_cli(["pack", "--data", str(data), "--out", str(out), "--workers", "1", "--shard-size", "100"], timeout=120)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    rejected = pd.read_csv(out / REJECTED, dtype=str)
    reasons = dict(zip(rejected["file"], rejected["reason"]))
    assert "not a regular file (a FIFO)" in reasons[f"{TRAIN_IMAGES}/{gid}.jpg"]
    assert "not a regular file" in reasons["training_solutions_rev1.csv:2"]
    assert load_manifest(out)["counts"]["rejected"] == 2 and verify(out) == []


def _processes_tagged(tag: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and tag.encode() in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


def test_sigterm_mid_pack_leaves_no_worker_holding_the_lock(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    synthesize(data, 48, seed=6, workers=2, progress=False, layout="gz2")
    tag = f"GZFAST_SIGTERM_TEST={uuid.uuid4().hex}"
    argv = ["pack", "--catalog", str(data / "catalog.csv"), "--images", str(data / "images"), "--tree", "gz2",
            "--out", str(out), "--workers", "2", "--shard-size", "1"]
    env = dict(os.environ, PYTHONPATH=str(REPO), GZFAST_SIGTERM_TEST=tag.split("=")[1])
    proc = subprocess.Popen([sys.executable, "-m", "shard_tools", *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.rglob("*.tar"))) < 2:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert not (out / MANIFEST).exists(), "pack finished before it could be stopped"
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("pack: error: stopped by SIGTERM"), err
    time.sleep(0.5)
    assert _processes_tagged(tag) == [], "a worker outlived the stopped pack"
    again = run_cli(argv[:-4] + ["--workers", "1", "--shard-size", "1"])  # at once: nobody holds the lock
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stdout and verify(out) == []
    assert not [p for p in out.rglob("*") if is_temp_name(p.name)]
