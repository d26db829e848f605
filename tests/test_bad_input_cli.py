"""Bad input through the command line, as a user meets it: one table of cases for `python -m shard_tools`
synth / pack / verify. For each: the exit code; no traceback; a fatal case ends with one line
`<prog>: error: ...`; a rejected row or file is named in rejected.csv with its reason; and every file that
existed before is byte-identical after (pack may rewrite only names it writes itself).

Then the failures a table cannot stage with a plain command: disk full mid-pack, content changes that keep
sizes, and synth replacing its own earlier output.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from shard_tools.catalog import LABELS_CSV, TEST_IMAGES, TRAIN_IMAGES
from shard_tools.layout import LOCK, MANIFEST, REJECTED, is_pack_name, is_temp_name
from shard_tools.pack import PackOptions, pack
from shard_tools.synth import MARKER, synthesize
from shard_tools.verify import verify

from helpers import REPO, load_manifest, read_shard_samples

pytestmark = pytest.mark.slow  # 55 subprocesses, 20 of them full packs

ERROR_LINE = re.compile(r"^(python -m shard_tools )?(synth|pack|verify): error: ")
PACK_FAST = ["--workers", "1", "--shard-size", "8"]


# --- the data every case starts from ------------------------------------------------------------

@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """24 train + 4 test synthetic galaxies (synth's own folder, marker included)."""
    data = tmp_path_factory.mktemp("base") / "data"
    synthesize(data, n_train=24, n_test=4, seed=3, workers=1, progress=False)
    return data


@pytest.fixture(scope="module")
def packed(base, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "out"
    pack(base, out, PackOptions(shard_size=8), workers=1, progress=False)
    return out


def csv_lines(data: Path) -> list[bytes]:
    return (data / LABELS_CSV).read_bytes().split(b"\n")


def write_lines(data: Path, lines: list[bytes]):
    (data / LABELS_CSV).write_bytes(b"\n".join(lines))


def row_id(data: Path, i: int) -> str:
    """GalaxyID of data row i (0-based; it is on file line i + 2)."""
    return csv_lines(data)[i + 1].split(b",")[0].decode()


def edit_row(data: Path, i: int, edit: Callable[[bytes], bytes]):
    lines = csv_lines(data)
    lines[i + 1] = edit(lines[i + 1])
    write_lines(data, lines)


def set_cell(data: Path, i: int, col: int, value: bytes):
    def edit(line: bytes) -> bytes:
        cells = line.split(b",")
        cells[col] = value
        return b",".join(cells)
    edit_row(data, i, edit)


def jpeg_with_orientation(orientation: int) -> bytes:
    arr = np.random.default_rng(0).integers(0, 60, (424, 424, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


# --- the cases --------------------------------------------------------------------------------------
# `prepare(root, data, out)` edits the copies and returns the arguments after `python -m shard_tools`.
# `expect`: text in the last stderr line (fatal, rc 2), in stderr (verify problems, rc 1), or, with rc 0,
# {galaxy_id or file part: reason part} that rejected.csv must hold. `check(root, res)` adds more.

@dataclass
class Case:
    name: str
    prepare: Callable
    rc: int
    expect: str | dict
    check: Callable | None = None
    with_set: bool = False   # start `out` as a copy of the packed set


def pack_args(data, out, *extra):
    return ["pack", "--data", str(data), "--out", str(out), *PACK_FAST, *extra]


def _dup_numeric(root, data, out):
    lines = csv_lines(data)
    lines[6] = b"0" + lines[3].split(b",", 1)[0] + b"," + lines[6].split(b",", 1)[1]
    write_lines(data, lines)
    return pack_args(data, out)


def _dup_exact(root, data, out):
    lines = csv_lines(data)
    lines[6] = lines[3].split(b",", 1)[0] + b"," + lines[6].split(b",", 1)[1]
    write_lines(data, lines)
    return pack_args(data, out)


def _dup_image(root, data, out):
    gid = row_id(data, 2)
    shutil.copy(data / TRAIN_IMAGES / f"{gid}.jpg", data / TRAIN_IMAGES / f"0{gid}.jpg")
    return pack_args(data, out)


def _train_and_test_same_id(root, data, out):
    test_id = sorted((data / TEST_IMAGES).glob("*.jpg"))[0].stem
    shutil.copy(data / TRAIN_IMAGES / f"{row_id(data, 4)}.jpg", data / TRAIN_IMAGES / f"{test_id}.jpg")
    return pack_args(data, out)


def _lock_held(root, data, out):
    out.mkdir()
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # released when this test process closes it (kept open for the case)
    os.write(fd, b"4242\n")
    _held_locks.append(fd)
    return pack_args(data, out)


_held_locks: list[int] = []


def _foreign_out(root, data, out):
    (out / "test").mkdir(parents=True)
    (out / "test" / "submission.csv").write_text("GalaxyID,Class1.1\n1,0.5\n")
    (out / "notes.txt").write_text("my notes\n")
    return pack_args(data, out)


def _user_manifest(root, data, out):
    out.mkdir()
    (out / MANIFEST).write_text('{"my": "own manifest"}\n')
    return pack_args(data, out)


def _padded_quoted_id(root, data, out):
    gid = row_id(data, 5)
    set_cell(data, 5, 0, f'" 00{gid} "'.encode())
    _padded_quoted_id.gid = gid
    return pack_args(data, out)


def _canonical_keys(root, res):
    """A zero-padded, quoted, blank-padded id packs under its canonical int key, and nothing is lost."""
    _no_rejections(root, res)
    keys = {k for s in load_manifest(root / "out")["shards"] for k in read_shard_samples(root / "out" / s["path"])}
    assert _padded_quoted_id.gid in keys and len(keys) == 28 and all(k == str(int(k)) for k in keys)


def _exif_train(root, data, out):
    (data / TRAIN_IMAGES / f"{row_id(data, 2)}.jpg").write_bytes(jpeg_with_orientation(6))
    return pack_args(data, out)


def _dup_image_check(root, res):
    """Both files of one id are rejected, each naming the other; so is the label row."""
    gid = row_id(root / "data", 2)
    rejected = pd.read_csv(root / "out" / REJECTED, dtype=str, keep_default_na=False)
    reasons = dict(zip(rejected["file"], rejected["reason"]))
    a, b = f"{TRAIN_IMAGES}/0{gid}.jpg", f"{TRAIN_IMAGES}/{gid}.jpg"
    assert b in reasons[a] and a in reasons[b], reasons
    assert "2 image files" in reasons[f"{LABELS_CSV}:4"]


def _repack_keeps_user_files(root, res):
    assert (root / "out" / "test" / "submission.csv").read_text() == "GalaxyID,Class1.1\n1,0.5\n"
    assert load_manifest(root / "out")["thresholds"]["high"] == 0.9
    assert verify(root / "out") == []


def _no_rejections(root, res):
    assert load_manifest(root / "out")["counts"]["rejected"] == 0, (root / "out" / REJECTED).read_text()


def _set_user_files(root, data, out):
    (out / "test" / "submission.csv").write_text("GalaxyID,Class1.1\n1,0.5\n")
    (out / "notes.txt").write_text("mine\n")
    return pack_args(data, out, "--high", "0.9")


def _write_manifest(text):
    def prepare(root, data, out):
        (out / MANIFEST).write_text(text)
        return ["verify", str(out)]
    return prepare


def _garble_manifest(edit):
    def prepare(root, data, out):
        m = json.loads((out / MANIFEST).read_text())
        edit(m)
        (out / MANIFEST).write_text(json.dumps(m))
        return ["verify", str(out)]
    return prepare


def _delete_first_shard(root, data, out):
    (out / load_manifest(out)["shards"][0]["path"]).unlink()
    return ["verify", str(out)]


def _synth_args(out, *extra):
    return ["synth", "--out", str(out), "--n-train", "3", "--n-test", "1", *extra]


def _csv_bytes(edit):
    def prepare(root, data, out):
        path = data / LABELS_CSV
        path.write_bytes(edit(path.read_bytes()))
        return pack_args(data, out)
    return prepare


def _row(i, edit):
    def prepare(root, data, out):
        edit_row(data, i, edit)
        return pack_args(data, out)
    return prepare


def _cell(i, col, value):
    def prepare(root, data, out):
        set_cell(data, i, col, value)
        return pack_args(data, out)
    return prepare


def _image(name, data_bytes, folder=TRAIN_IMAGES):
    def prepare(root, data, out):
        (data / folder / name).write_bytes(data_bytes() if callable(data_bytes) else data_bytes)
        return pack_args(data, out)
    return prepare


def _blank_then_short_row(root, data, out):
    lines = csv_lines(data)
    lines.insert(4, b"")            # a blank line 5: the short row below is on line 9
    lines[8] = b",".join(lines[8].split(b",")[:10])
    write_lines(data, lines)
    return pack_args(data, out)


CASES = [
    # --- pack: the input cannot be read at all -> exit 2, one line
    Case("pack-missing-data", lambda r, d, o: pack_args(r / "nope", o), 2, "--data folder not found"),
    Case("pack-data-is-file", lambda r, d, o: pack_args(d / LABELS_CSV, o), 2, "--data folder is not a folder"),
    Case("pack-no-csv", lambda r, d, o: ((d / LABELS_CSV).unlink(), pack_args(d, o))[1], 2, "label file not found"),
    Case("pack-no-train-folder", lambda r, d, o: (shutil.rmtree(d / TRAIN_IMAGES), pack_args(d, o))[1], 2,
         "training image folder not found"),
    Case("pack-train-folder-is-file", lambda r, d, o: (shutil.rmtree(d / TRAIN_IMAGES), (d / TRAIN_IMAGES).write_text("x"),
                                                       pack_args(d, o))[2], 2, "is not a folder"),
    Case("pack-empty-csv", _csv_bytes(lambda b: b""), 2, "no header line"),
    Case("pack-bad-header", _csv_bytes(lambda b: b.replace(b"Class7.2", b"Class7.9", 1)), 2, "header is not the Kaggle one"),
    Case("pack-header-not-utf8", _csv_bytes(lambda b: b.replace(b"Class1.1", b"Class1.\xff", 1)), 2,
         "header is not the Kaggle one"),
    Case("pack-duplicate-id", _dup_exact, 2, "duplicated GalaxyID"),
    Case("pack-duplicate-id-as-numbers", _dup_numeric, 2, "duplicated GalaxyID"),
    # --- pack: options and --out
    Case("pack-thresholds-reversed", lambda r, d, o: pack_args(d, o, "--high", "0.5", "--low", "0.9"), 2, "need 0 <= --low"),
    Case("pack-val-fraction", lambda r, d, o: pack_args(d, o, "--val-fraction", "1.5"), 2, "--val-fraction"),
    Case("pack-shard-size-0", lambda r, d, o: pack_args(d, o, "--shard-size", "0"), 2, "--shard-size"),
    Case("pack-negative-tol", lambda r, d, o: pack_args(d, o, "--tol", "-1"), 2, "--tol"),
    Case("pack-workers-0", lambda r, d, o: pack_args(d, o, "--workers", "0"), 2, "argument --workers"),
    Case("pack-out-is-file", lambda r, d, o: ((r / "f").write_text("x"), pack_args(d, r / "f"))[1], 2, "--out is a file"),
    Case("pack-out-foreign-folder", _foreign_out, 2, "not a packed set"),
    Case("pack-out-is-data", lambda r, d, o: pack_args(d, d), 2, "not a packed set"),
    Case("pack-out-user-manifest", _user_manifest, 2, "not a packed set"),
    Case("pack-lock-held", _lock_held, 2, "another pack is writing"),
    # --- pack: bad rows and files are rejected with file:line and a reason; the rest packs
    Case("pack-empty-id", _cell(3, 0, b""), 0, {"training_solutions_rev1.csv:5": "not a positive integer"}),
    Case("pack-id-zero", _cell(3, 0, b"0"), 0, {"training_solutions_rev1.csv:5": "not a positive integer"}),
    Case("pack-id-arabic-digits", _cell(3, 0, "١٢٣".encode()), 0, {"training_solutions_rev1.csv:5": "not a positive integer"}),
    Case("pack-id-too-large", _cell(3, 0, b"99999999999999999999"), 0, {"training_solutions_rev1.csv:5": "int64"}),
    Case("pack-too-few-fields", _row(3, lambda b: b.rsplit(b",", 1)[0]), 0,
         {"training_solutions_rev1.csv:5": "37 fields, expected 38"}),
    Case("pack-too-many-fields", _row(3, lambda b: b + b",0.5"), 0, {"training_solutions_rev1.csv:5": "39 fields"}),
    Case("pack-non-utf8-cell", _cell(3, 7, b"0.\xe9"), 0, {"training_solutions_rev1.csv:5": "not UTF-8"}),
    Case("pack-unbalanced-quote", _cell(3, 7, b'"0.5'), 0, {"training_solutions_rev1.csv:5": "fields, expected 38"}),
    Case("pack-label-inf", _cell(3, 2, b"inf"), 0, {"training_solutions_rev1.csv:5": "non-finite"}),
    Case("pack-label-text", _cell(3, 2, b"abc"), 0, {"training_solutions_rev1.csv:5": "non-numeric"}),
    Case("pack-blank-line-keeps-line-numbers", _blank_then_short_row, 0, {"training_solutions_rev1.csv:9": "fields, expected 38"}),
    Case("pack-duplicate-image-files", _dup_image, 0, {"/0": "same GalaxyID"}, _dup_image_check),
    Case("pack-id-in-train-and-test", _train_and_test_same_id, 0, {TEST_IMAGES: "same GalaxyID"}),
    Case("pack-exif-orientation", _exif_train, 0, {TRAIN_IMAGES: "EXIF Orientation tag is 6"}),
    Case("pack-exif-orientation-test", _image("123457.jpg", lambda: jpeg_with_orientation(6), TEST_IMAGES), 0,
         {"123457.jpg": "EXIF Orientation tag is 6"}),
    Case("pack-bad-image-name", _image("abc.jpg", b"\xff\xd8\xff"), 0, {"abc.jpg": "file name is not <GalaxyID>.jpg"}),
    Case("pack-image-name-non-utf8", _image("12\udcff.jpg", b"\xff\xd8\xff"), 0, {"12\\xff.jpg": "file name is not"}),
    # --- pack: odd but valid input packs whole, under canonical ids
    Case("pack-padded-quoted-id", _padded_quoted_id, 0, {}, _canonical_keys),
    Case("pack-crlf-and-bom", _csv_bytes(lambda b: b"\xef\xbb\xbf" + b.replace(b"\n", b"\r\n")), 0, {}, _no_rejections),
    Case("pack-into-set-with-user-files", _set_user_files, 0, {}, _repack_keeps_user_files, with_set=True),
    # --- verify
    Case("verify-missing-folder", lambda r, d, o: ["verify", str(r / "nope")], 2, "no manifest"),
    Case("verify-out-is-file", lambda r, d, o: ["verify", str(d / LABELS_CSV)], 2, "no manifest"),
    Case("verify-truncated-manifest", _write_manifest('{"format": "gzfast-shards-v1", "shards": [{"pa'), 2,
         "unreadable manifest", with_set=True),
    Case("verify-manifest-not-object", _write_manifest("[]"), 2, "not a gzfast manifest", with_set=True),
    Case("verify-manifest-no-shards", _garble_manifest(lambda m: m.pop("shards")), 2, "lacks or garbles", with_set=True),
    Case("verify-manifest-bad-counts", _garble_manifest(lambda m: m.update(counts=[1, 2])), 2, "lacks or garbles",
         with_set=True),
    Case("verify-shard-missing", _delete_first_shard, 1, "shard file missing", with_set=True),
    Case("verify-workers-0", lambda r, d, o: ["verify", str(o), "--workers", "0"], 2, "argument --workers", with_set=True),
    # --- synth
    Case("synth-out-is-file", lambda r, d, o: _synth_args(d / LABELS_CSV), 2, "--out is a file"),
    Case("synth-out-foreign-folder", lambda r, d, o: ((r / "mine").mkdir(), (r / "mine" / "a.txt").write_text("x"),
                                                      _synth_args(r / "mine"))[2], 2, "holds no synth.json"),
    Case("synth-out-is-packed-set", lambda r, d, o: _synth_args(o), 2, "holds no synth.json", with_set=True),
    Case("synth-garbled-marker", lambda r, d, o: ((d / MARKER).write_text("{"), _synth_args(d))[1], 2, "not a marker"),
    Case("synth-n-train-0", lambda r, d, o: ["synth", "--out", str(r / "s"), "--n-train", "0"], 2, "--n-train >= 1"),
    Case("synth-n-train-text", lambda r, d, o: ["synth", "--out", str(r / "s"), "--n-train", "many"], 2, "argument --n-train"),
    Case("synth-workers-0", lambda r, d, o: _synth_args(r / "s", "--workers", "0"), 2, "argument --workers"),
]



# --- running one case ------------------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def may_change(rel: str, argv: list[str], rc: int) -> bool:
    """Files a command legitimately rewrites: a pack that succeeds, its own names in its --out."""
    return argv[0] == "pack" and rc == 0 and rel.startswith("out/") and is_pack_name(rel[len("out/"):])


def run_cli(argv: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "shard_tools", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, errors="backslashreplace", timeout=120)


def test_cases_are_many_and_distinct():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)) and len(names) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, base, packed, tmp_path):
    root = tmp_path
    data, out = root / "data", root / "out"
    shutil.copytree(base, data)
    if case.with_set:
        shutil.copytree(packed, out)
    argv = case.prepare(root, data, out)
    before = snapshot(root)
    try:
        res = run_cli(argv)
    finally:
        while _held_locks:
            os.close(_held_locks.pop())
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == case.rc, (res.returncode, res.stdout, res.stderr)
    last = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ""
    if case.rc == 2:
        assert ERROR_LINE.match(last), res.stderr
        assert case.expect in last, last
    elif case.rc == 1:
        assert case.expect in res.stderr, res.stderr
    else:
        rejected = pd.read_csv(out / REJECTED, dtype=str, keep_default_na=False)
        for where, reason in case.expect.items():
            hits = rejected[rejected["file"].str.contains(where, regex=False) & rejected["reason"].str.contains(reason, regex=False)]
            assert len(hits), (where, reason, rejected.to_string())
        counts = load_manifest(out)["counts"]
        assert counts["accepted"] + counts["rejected"] == counts["input"] == len(rejected) + counts["accepted"]
    if case.check:
        case.check(root, res)
    after = snapshot(root)
    changed = [rel for rel, digest in before.items() if after.get(rel) != digest and not may_change(rel, argv, res.returncode)]
    assert not changed, f"pre-existing files changed or removed: {changed}"
    assert not [p for p in root.rglob("*") if is_temp_name(p.name)]


# --- what a table cannot stage -------------------------------------------------------------------------

ENOSPC_AFTER = """
import errno, pathlib, sys
from shard_tools.__main__ import main
real = pathlib.Path.write_bytes
calls = []
def full(self, data):
    if ".tar.tmp" in self.name:
        calls.append(self)
        if len(calls) > {n}:
            real(self, data[:100])  # a partial write, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device")
    return real(self, data)
pathlib.Path.write_bytes = full
sys.exit(main(sys.argv[1:]))
"""


def test_disk_full_mid_pack_names_the_path_and_leaves_no_temp(base, packed, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(packed, out)
    (out / "notes.txt").write_text("mine\n")
    before = snapshot(tmp_path)
    argv = pack_args(base, out, "--high", "0.9")  # other options: every shard is rewritten
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-c", ENOSPC_AFTER.format(n=2), *argv], cwd=REPO, env=env,
                         capture_output=True, text=True)
    assert "Traceback" not in res.stderr and res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("pack: error: cannot write ") and "No space left on device (ENOSPC)" in last, last
    assert str(out) in last and ".tar" in last
    assert not [p for p in out.rglob("*") if is_temp_name(p.name)]
    assert not (out / MANIFEST).exists()  # documented: no manifest until a pack completes
    after = snapshot(tmp_path)
    assert all(after.get(rel) == d for rel, d in before.items() if not is_pack_name(rel.removeprefix("out/")))
    # space again: the re-run resumes from the shards that were finished
    ok = run_cli(argv)
    assert ok.returncode == 0 and "resuming, 2 of" in ok.stdout, ok.stdout + ok.stderr
    assert verify(out) == [] and (out / "notes.txt").read_text() == "mine\n"


def test_same_size_content_change_is_repacked(base, tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(base, data)
    pack(data, out, PackOptions(shard_size=8), workers=1, progress=False)
    img = sorted((data / TRAIN_IMAGES).glob("*.jpg"))[3]
    raw = bytearray(img.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # same name, same size, other bytes
    img.write_bytes(bytes(raw))
    old = load_manifest(out)["input_fingerprint"]
    capsys.readouterr()
    pack(data, out, PackOptions(shard_size=8), workers=1, progress=False)
    assert "nothing to do" not in capsys.readouterr().out
    assert load_manifest(out)["input_fingerprint"] != old


def test_synth_replaces_only_its_own_earlier_output(tmp_path):
    out = tmp_path / "s"
    synthesize(out, 10, 3, seed=1, workers=1, progress=False)
    (out / TRAIN_IMAGES / "user.txt").write_text("mine\n")
    (out / "README").write_text("mine\n")
    synthesize(out, 4, 1, seed=1, workers=1, progress=False)
    images = sorted(p.name for p in (out / TRAIN_IMAGES).glob("*.jpg"))
    labels = pd.read_csv(out / LABELS_CSV, dtype=str)
    assert sorted(f"{g}.jpg" for g in labels["GalaxyID"]) == images and len(images) == 4  # no leftovers
    assert len(list((out / TEST_IMAGES).glob("*.jpg"))) == 1
    assert (out / TRAIN_IMAGES / "user.txt").read_text() == (out / "README").read_text() == "mine\n"
    # an interrupted synth (marker says incomplete) is recognised and redone, not refused
    marker = json.loads((out / MARKER).read_text())
    (out / MARKER).write_text(json.dumps({**marker, "complete": False}))
    (out / TRAIN_IMAGES / images[0]).write_bytes(b"half")
    synthesize(out, 4, 1, seed=1, workers=1, progress=False)
    assert (out / TRAIN_IMAGES / images[0]).read_bytes()[:3] == b"\xff\xd8\xff"
    assert json.loads((out / MARKER).read_text())["complete"] is True


def test_image_changed_during_pack_stops_instead_of_packing_unfingerprinted_bytes(base, tmp_path, monkeypatch):
    import shard_tools.pack as pack_module
    from shard_tools.pack import PackError

    data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(base, data)
    img = sorted((data / TRAIN_IMAGES).glob("*.jpg"))[0]
    real = pack_module.read_catalog

    def read_then_change(*args, **kw):  # after the fingerprint, before the shards
        cat = real(*args, **kw)
        raw = bytearray(img.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        img.write_bytes(bytes(raw))
        return cat

    monkeypatch.setattr(pack_module, "read_catalog", read_then_change)
    with pytest.raises(PackError, match="changed while pack was running"):
        pack(data, out, PackOptions(shard_size=8), workers=1, progress=False)
    assert not (out / MANIFEST).exists()
    assert not [p for p in out.rglob("*") if is_temp_name(p.name)]


def test_unreadable_image_folder_is_one_clear_error(base, tmp_path, monkeypatch):
    """chmod cannot stage it for root (CI runs as root): make listing the folder fail as it would."""
    from shard_tools.catalog import CatalogError

    real = Path.iterdir

    def denied(self):
        if self.name == TRAIN_IMAGES:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", denied)
    with pytest.raises(CatalogError, match=f"{TRAIN_IMAGES}: cannot list the image folder \\(Permission denied\\)"):
        pack(base, tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "out").exists()
