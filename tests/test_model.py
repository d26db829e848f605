import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from gzfast.model import GZ2Model, TreeHead, freeze, frozen_modules, load_pretrained, param_groups
from gzfast.pretrained import PretrainedError
from shard_tools import schema


def test_tree_head_outputs_obey_the_decision_tree():
    raw = torch.randn(64, 37) * 3
    out = TreeHead()(raw).numpy()
    assert schema.check_constraints(out, tol=1e-5).all()
    assert (out >= 0).all() and (out <= 1 + 1e-6).all()


def test_sigmoid_and_tree_models_give_37_outputs():
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    for head in ("sigmoid", "tree"):
        y = GZ2Model("convnext_atto", head)(x)
        assert y.shape == (2, 37) and (y >= 0).all() and (y <= 1).all()
    with pytest.raises(ValueError, match="unknown head"):
        GZ2Model("convnext_atto", "softmax")


def test_freezing_and_per_group_learning_rates_act_on_a_real_step():
    torch.manual_seed(0)
    model = GZ2Model("convnext_atto")
    frozen = freeze(model, 2)
    assert frozen == sum(p.numel() for m in frozen_modules(model, 2) for p in m.parameters())
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    lr_backbone, lr_head = 1e-4, 5e-3
    opt = torch.optim.AdamW(param_groups(model, lr_backbone, lr_head, 0.0))
    loss = model(torch.randn(4, 3, 32, 32)).sub(0.5).pow(2).mean()
    loss.backward()
    opt.step()
    after = model.backbone.state_dict()
    for k in before:
        delta = (after[k] - before[k]).abs()
        if k.startswith(("stem.", "stages.0.", "stages.1.")):
            assert torch.equal(delta, torch.zeros_like(delta)), k   # frozen: not a bit changed
    # Adam's first step moves every element with a gradient by ~lr: the groups really have their lrs
    head_step = (after["head.fc.weight"] - before["head.fc.weight"]).abs()
    body_step = (after["stages.3.downsample.1.weight"] - before["stages.3.downsample.1.weight"]).abs()
    assert np.median(head_step[head_step > 0]) == pytest.approx(lr_head, rel=0.05)
    assert np.median(body_step[body_step > 0]) == pytest.approx(lr_backbone, rel=0.05)
    names = {g["name"]: g for g in param_groups(model, lr_backbone, lr_head, 0.1)}
    assert names["head"]["lr"] == lr_head and names["backbone"]["weight_decay"] == 0.1
    assert names["backbone_no_decay"]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="4 stages"):
        freeze(model, 5)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_round_trip(tmp_path, suffix):
    torch.manual_seed(1)
    source = timm.create_model("convnext_atto", num_classes=1000)  # an ImageNet-shaped state dict
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(source.state_dict(), str(path))
    else:
        torch.save({"state_dict": source.state_dict()}, path)
    model = GZ2Model("convnext_atto")
    info = load_pretrained(model, path)
    assert set(info["skipped"]) == {"head.fc.weight", "head.fc.bias"}
    own = model.backbone.state_dict()
    for k, v in source.state_dict().items():
        if not k.startswith("head.fc."):
            assert torch.equal(own[k], v), k
    assert own["head.fc.weight"].shape == (37, 320)


def test_pretrained_of_another_model_is_refused(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(timm.create_model("convnext_femto").state_dict(), path)
    with pytest.raises(ValueError, match="do not fit"):
        load_pretrained(GZ2Model("convnext_atto"), path)
    with pytest.raises(FileNotFoundError):
        load_pretrained(GZ2Model("convnext_atto"), tmp_path / "missing.pth")


def save_state(state: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("name", ["convnext_atto", "resnet10t"])
def test_a_headless_encoder_loads_every_backbone_tensor_and_the_classifier_starts_fresh(tmp_path, name):
    torch.manual_seed(2)
    encoder = timm.create_model(name, num_classes=0)  # the form zoobot publishes its encoders in
    path = save_state(encoder.state_dict(), tmp_path / "encoder.safetensors")
    model = GZ2Model(name)
    fresh = {k: v.clone() for k, v in model.backbone.get_classifier().state_dict().items()}
    info = load_pretrained(model, path)
    assert info["loaded"] == len(encoder.state_dict()) and info["classifier"] == "new" and info["skipped"] == []
    assert "headless encoder" in info["summary"] and f"loaded {info['loaded']} backbone tensors" in info["summary"]
    own = model.backbone.state_dict()
    assert all(torch.equal(own[k], v) for k, v in encoder.state_dict().items())
    assert all(torch.equal(model.backbone.get_classifier().state_dict()[k], v) for k, v in fresh.items())
    x = torch.randn(2, 3, 32, 32)
    backbone = model.backbone.eval()
    with torch.no_grad():  # the features before the classifier are the encoder's own
        assert torch.equal(backbone.forward_head(backbone.forward_features(x), pre_logits=True), encoder.eval()(x))


def test_the_trainers_setup_says_what_pretrained_loaded(tmp_path):
    from gzfast.build import build_training
    from gzfast.config import TrainConfig
    path = save_state(timm.create_model("convnext_atto", num_classes=0).state_dict(), tmp_path / "encoder.safetensors")
    cfg = TrainConfig(model="convnext_atto", pretrained=str(path), batch_size=4, out=str(tmp_path / "run")).resolve(False)
    notes = build_training(cfg).notes
    assert f"--pretrained {path}: loaded 126 backbone tensors; a headless encoder: the classifier (37 outputs, one per " \
           f"answer) starts fresh" in notes


def test_a_full_classifier_loses_its_head_and_says_so(tmp_path):
    source = timm.create_model("convnext_atto", num_classes=1000)
    info = load_pretrained(GZ2Model("convnext_atto"), save_state(source.state_dict(), tmp_path / "in1k.pth"))
    assert info["classifier"] == "replaced" and info["loaded"] == len(source.state_dict()) - 2
    assert "dropped its classifier (head.fc.weight, head.fc.bias: 1000 outputs; ours has 37" in info["summary"]


def test_a_wrappers_encoder_is_found_under_its_prefix(tmp_path):
    """A zoobot Lightning checkpoint: the timm encoder under `encoder.`, the wrapper's own head beside it."""
    encoder = timm.create_model("convnext_atto", num_classes=0)
    state = {**{f"encoder.{k}": v for k, v in encoder.state_dict().items()},
             "head.0.weight": torch.zeros(37, 320), "head.0.bias": torch.zeros(37)}
    path = tmp_path / "zoobot.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    model = GZ2Model("convnext_atto")
    info = load_pretrained(model, path)
    assert info["loaded"] == len(encoder.state_dict()) and set(info["skipped"]) == {"head.0.weight", "head.0.bias"}
    assert "names under 'encoder.'" in info["summary"] and torch.equal(
        model.backbone.state_dict()["stem.0.weight"], encoder.state_dict()["stem.0.weight"])


def test_a_mismatched_file_names_its_first_misfits_and_the_model_it_fits(tmp_path):
    path = save_state(timm.create_model("convnext_femto").state_dict(), tmp_path / "femto.pth")
    model = GZ2Model("convnext_atto")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PretrainedError) as info:
        load_pretrained(model, path)
    message = str(info.value)
    assert "stem.0.weight is [48, 3, 4, 4] in the file, [40, 3, 4, 4] in the model" in message
    assert "timm's convnext_femto: train with --model convnext_femto" in message and "cannot use it" in message
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # nothing loaded
    other = save_state(timm.create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(PretrainedError, match="conv1.weight.*another kind of network"):
        load_pretrained(model, other)
    garbage = tmp_path / "x.safetensors"
    garbage.write_text("no")
    with pytest.raises(PretrainedError, match="not a readable state dict"):
        load_pretrained(model, garbage)


def exported_folder(folder: Path, head: str, columns) -> Path:
    """What gzfast.export leaves for load_pretrained to read: the weights and the fields of config.json it uses."""
    from gzfast.export_layout import FORMAT
    folder.mkdir()
    torch.manual_seed(4)
    save_state(GZ2Model("convnext_atto", head).backbone.state_dict(), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"architecture": "convnext_atto", "label_names": list(columns),
                                                    "gzfast": {"format": FORMAT, "head": head, "complete": True}}))
    return folder


def test_an_exports_classifier_is_kept_only_for_the_same_answers_and_head(tmp_path):
    folder = exported_folder(tmp_path / "export", "tree", schema.COLUMNS)
    from safetensors.torch import load_file
    weights = load_file(str(folder / "model.safetensors"))
    same = GZ2Model("convnext_atto", "tree")
    info = load_pretrained(same, folder)  # the folder stands for its model.safetensors
    assert info["classifier"] == "kept" and info["loaded"] == len(weights)
    assert torch.equal(same.backbone.state_dict()["head.fc.weight"], weights["head.fc.weight"])
    other_head = GZ2Model("convnext_atto", "sigmoid")
    info = load_pretrained(other_head, folder / "model.safetensors")
    assert info["classifier"] == "replaced" and "not known to mean our 37 answers with a sigmoid head" in info["summary"]
    assert not torch.equal(other_head.backbone.state_dict()["head.fc.weight"], weights["head.fc.weight"])
    shuffled = exported_folder(tmp_path / "shuffled", "tree", schema.COLUMNS[::-1])
    assert load_pretrained(GZ2Model("convnext_atto", "tree"), shuffled)["classifier"] == "replaced"
    (tmp_path / "plain").mkdir()
    with pytest.raises(PretrainedError, match="a folder that gzfast.export did not write"):
        load_pretrained(same, tmp_path / "plain")


def test_tree_head_trains():
    raw = torch.randn(8, 37, requires_grad=True)
    TreeHead()(raw).sum().backward()
    assert raw.grad is not None and torch.isfinite(raw.grad).all()


def test_other_timm_models_get_their_classifier_as_head():
    model = GZ2Model("resnet10t")
    groups = {g["name"]: g for g in param_groups(model, 1e-4, 5e-4, 0.1)}
    fc = model.backbone.get_classifier()
    assert {id(p) for g in groups.values() if g["name"].startswith("head") for p in g["params"]} == \
        {id(p) for p in fc.parameters()}
    assert freeze(model, 0) == 0
    with pytest.raises(ValueError, match="no stem/stages"):
        freeze(model, 2)


def dieleman_relu_head(raw: torch.Tensor) -> torch.Tensor:
    """The former tree head (clamp at 0, normalise, times the parent), kept here as the reference to beat."""
    raw = raw.float().clamp_min(0) + 1e-6
    columns = [None] * 37
    for q in schema.QUESTIONS:
        part = raw[:, list(q.columns)]
        part = part / (part.sum(dim=1, keepdim=True) + 1e-12)
        if q.parent is not None:
            part = part * columns[q.parent]
        for k, c in enumerate(q.columns):
            columns[c] = part[:, k:k + 1]
    return torch.cat(columns, dim=1)


def fit_head(head, features: torch.Tensor, target: torch.Tensor, steps: int = 60) -> float:
    """Adam on a linear layer under `head`, fitting real label rows; returns the final MSE."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(features.shape[1], 37)
    opt = torch.optim.Adam(linear.parameters(), lr=3e-2)
    for _ in range(steps):
        loss = (head(linear(features)) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def test_tree_head_learns_real_labels_where_the_relu_head_stalls(gz2_dir):
    import pandas as pd
    target = torch.tensor(pd.read_csv(gz2_dir / "training_solutions_subset.csv", nrows=256)[schema.COLUMNS].to_numpy(),
                          dtype=torch.float32)
    features = torch.randn(len(target), 64, generator=torch.Generator().manual_seed(0))
    mean_mse = (target - target.mean(0)).pow(2).mean().item()
    tree, relu = fit_head(TreeHead(), features, target), fit_head(dieleman_relu_head, features, target)
    # measured: tree 0.57x the predict-the-mean MSE, the ReLU head 1.45x (its dead answers never recover)
    assert tree < 0.75 * mean_mse and tree < 0.6 * relu, (tree, relu, mean_mse)
    # and the softmax head starts where a fresh head should: every answer alive, the tree obeyed
    out = TreeHead()(torch.zeros(2, 37))
    assert (out > 0).all() and schema.check_constraints(out.numpy(), tol=1e-6).all()
