"""The setup the trainer and the benchmark share (gzfast.build) and the loaders' speed settings: where a
resumed optimizer's state lands, the backend switches, the core budget, pinned batches, DALI's threads
and hardware-decoder share."""
import copy

import pytest
import torch

from gzfast import build
from gzfast.config import ConfigError, TrainConfig
from gzfast.loaders import LoaderError, make_loader
from gzfast.loaders.dali import HW_DECODER_LOAD, DALILoader
from gzfast.train import training_step
from shard_tools.layout import PackedSet


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    values = {"model": "resnet10t", "image_size": 32, "batch_size": 4, "out": str(tmp_path), **overrides}
    return TrainConfig(**values).resolve(cuda=False)


def test_a_resumed_optimizer_state_is_loaded_after_accelerate_placed_the_optimizer(tmp_path, monkeypatch):
    """Accelerate moves the whole optimizer state to the device when it wraps the optimizer, AdamW's step
    counters too (on a GPU: a host sync per parameter per step, pytorch/pytorch#128208). The checkpoint's
    state must arrive after that: Accelerate then has nothing to move, the counters stay CPU tensors and
    the state is the saved one."""
    import accelerate.optimizer

    cfg = tiny_config(tmp_path)
    first = build.build_training(cfg)
    images = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    for _ in range(3):
        training_step(first.train_model, first.optimizer, first.accelerator, images, torch.rand(4, 37))
    saved = copy.deepcopy(first.optimizer.state_dict())
    moved = []
    real_move = accelerate.optimizer.move_to_device

    def recording_move(obj, device, *args, **kwargs):
        if isinstance(obj, dict) and "param_groups" in obj:  # the optimizer's state dict (it recurses below)
            moved.append(sum(len(s) for s in obj["state"].values()))  # tensors Accelerate would place
        return real_move(obj, device, *args, **kwargs)

    monkeypatch.setattr(accelerate.optimizer, "move_to_device", recording_move)
    resumed = build.build_training(cfg, model_state=first.model.state_dict(), optimizer_state=saved)
    assert moved == [0]  # Accelerate wrapped an optimizer with no state yet
    state = resumed.optimizer.state_dict()["state"]
    assert state.keys() == saved["state"].keys() and state
    for key, entry in state.items():
        assert entry["step"].device.type == "cpu" and entry["step"].dtype == torch.float32
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(entry[name], saved["state"][key][name]), name


@pytest.mark.parametrize("cuda,precision,deterministic,expected", [
    (True, "bf16", False, {"cudnn_benchmark": True, "tf32_matmul": False, "fused_adamw": True}),
    (True, "fp32", False, {"cudnn_benchmark": True, "tf32_matmul": True, "fused_adamw": True}),
    (True, "fp32", True, {"cudnn_benchmark": False, "tf32_matmul": True, "fused_adamw": True}),
    (False, "fp32", False, {"cudnn_benchmark": False, "tf32_matmul": False, "fused_adamw": False}),
])
def test_backend_settings_follow_the_device_and_the_recipe(tmp_path, cuda, precision, deterministic, expected):
    cfg = tiny_config(tmp_path, precision=precision, deterministic=deterministic)
    assert build.backend_settings(cfg, cuda) == expected


def test_a_cpu_build_leaves_the_cuda_switches_alone_and_says_so(tmp_path):
    training = build.build_training(tiny_config(tmp_path))
    assert "backends: cudnn benchmark off, tf32 matmul off, fused adamw off" in training.notes
    assert not torch.backends.cudnn.benchmark and torch.get_float32_matmul_precision() == "highest"
    assert not any(g.get("fused") for g in training.optimizer.param_groups)


def test_the_loader_threads_follow_the_cores_of_a_gpu_rank(monkeypatch):
    monkeypatch.setattr(build, "usable_cores", lambda: 16)
    assert build.budget_cores("dali-gpu", None, cuda=True)[1] == 15  # every core but the training loop's
    assert build.budget_cores("dali-gpu", None, cuda=True, processes=2)[1] == 7
    assert build.budget_cores("dali-gpu", 3, cuda=True)[1] == 3     # --workers wins


def test_pil_batches_are_pinned_only_when_they_feed_a_gpu(synth_shards):
    paths = PackedSet.open(synth_shards).paths("val")
    on_gpu = make_loader("pil", paths, train=False, batch_size=4, image_size=32, device=torch.device("cuda", 0))
    on_cpu = make_loader("pil", paths, train=False, batch_size=4, image_size=32)
    assert on_gpu.dataloader_options()["pin_memory"] is True  # built, never iterated: no GPU needed
    assert on_cpu.dataloader_options()["pin_memory"] is False


def test_dali_gpu_threads_and_hardware_decoder_share(synth_shards, monkeypatch):
    """The settings of a dali-gpu loader, read without building its pipeline (no GPU needed)."""
    import gzfast.loaders.dali as dali
    monkeypatch.setattr(dali, "usable_cores", lambda: 16)
    spec = make_loader("dali-cpu", PackedSet.open(synth_shards).paths("val"), train=False, batch_size=4).spec
    loader = DALILoader(spec, decode_on_gpu=True)
    assert loader.threads == 15 and loader.hw_decoder_load == HW_DECODER_LOAD == 0.65
    assert DALILoader(spec, decode_on_gpu=True, hw_decoder_load=0.0).hw_decoder_load == 0.0
    with pytest.raises(LoaderError, match="hw_decoder_load 1.5"):
        DALILoader(spec, decode_on_gpu=True, hw_decoder_load=1.5)
    with pytest.raises(ConfigError, match="hw_decoder_load"):
        TrainConfig(hw_decoder_load=-0.1, out="x").resolve(cuda=False)
