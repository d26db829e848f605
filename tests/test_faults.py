"""Faults during training: a corrupt shard in a 2-process run, a full disk while writing a checkpoint."""
import errno
import shutil

import pytest
import torch

from gzfast import checkpoint as ckpt
from gzfast.train import main
from shard_tools.layout import index_path, read_index

from helpers import TINY_MP, accelerate_launch, finish


def plant_undecodable_jpeg(shards, tmp_path):
    """A copy of the set whose first high-tier shard holds a JPEG gone bad after packing (same size: only
    decoding finds it). Returns (set, shard path, GalaxyID)."""
    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    tar = next(iter(sorted((bad / "train" / "high").glob("*.tar"))))
    jpg = next(e for e in read_index(index_path(tar))[5] if e.ext == "jpg")
    raw = bytearray(tar.read_bytes())
    raw[jpg.offset + 200: jpg.offset + jpg.size - 10] = bytes(jpg.size - 210)
    tar.write_bytes(bytes(raw))
    return bad, tar, jpg.key


@pytest.mark.slow
def test_a_corrupt_shard_in_a_two_process_run_is_named_on_every_rank(synth_shards, tmp_path):
    bad, tar, key = plant_undecodable_jpeg(synth_shards, tmp_path)
    proc = accelerate_launch(bad, tmp_path / "run")
    _, err = finish(proc, timeout=300)
    assert proc.returncode != 0
    lines = [line for line in err.splitlines() if line.startswith("train: error:")]
    # the rank that read it names the shard and the sample; the other rank, stopped by its exit, says the same
    assert len(lines) == 2 and lines[0] == lines[1], err[-3000:]
    assert f"{tar}: sample {key} does not decode" in lines[0] and "shard_tools verify" in lines[0]


@pytest.mark.slow
def test_a_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(synth_shards, tmp_path, monkeypatch, capsys):
    real_save, saves = torch.save, []

    def filling(obj, path, *a, **kw):
        saves.append(path)
        if len(saves) == 2:  # epoch 2's checkpoint: part of it lands, then the disk is full
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(torch, "save", filling)
    run = tmp_path / "run"
    assert main(["--shards", str(synth_shards), "--out", str(run), *TINY_MP, "--epochs", "2", "--no-plot",
                 "--ceiling-probe", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("train: error: cannot write or read ") and "last.pt: No space left on device" in err
    assert "last checkpoint stays" in err
    state = ckpt.load(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 1  # the previous checkpoint, intact
    assert not [p for p in (run / "checkpoints").iterdir() if ".tmp" in p.name]
