import json
import subprocess
import sys

import pytest

from gzfast.config import ConfigError, TrainConfig, config_from_dict, explicit_values

from helpers import REPO


def parse_config(argv) -> TrainConfig:
    """Defaults < config file < flags, unresolved: what the trainer builds from its command line."""
    return TrainConfig(**explicit_values(argv))


def test_defaults_are_the_study():
    c = TrainConfig().resolve(cuda=True)
    assert (c.model, c.epochs, c.batch_size, c.lr_backbone, c.lr_head, c.weight_decay, c.image_size) == \
        ("convnext_small", 20, 512, 1e-4, 5e-4, 1e-4, 224)
    assert (c.loader, c.precision, c.compile, c.freeze_stages) == ("dali-gpu", "bf16", "on", 0)
    cpu = TrainConfig(pretrained="w.pth").resolve(cuda=False)
    assert (cpu.loader, cpu.precision, cpu.compile, cpu.freeze_stages) == ("pil", "fp32", "off", 2)


def test_curriculum_flag_alone_and_with_epochs():
    assert parse_config(["--curriculum"]).resolve(False).curriculum == "high:4,high+medium:4,all:12"
    c = parse_config(["--curriculum", "--epochs", "10"]).resolve(False)
    assert (c.curriculum, c.epochs) == ("high:2,high+medium:2,all:6", 10)
    assert parse_config(["--curriculum", "high:5,all:15"]).resolve(False).epochs == 20
    with pytest.raises(ConfigError, match="conflicts"):
        parse_config(["--curriculum", "high:5,all:15", "--epochs", "10"]).resolve(False)
    assert parse_config([]).resolve(False).schedule_text() == "all:20"


def test_file_then_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: convnext_atto\nlr-head: 0.001\nepochs: 3\n")
    c = parse_config(["--config", str(f), "--epochs", "4"]).resolve(False)
    assert (c.model, c.lr_head, c.epochs) == ("convnext_atto", 0.001, 4)


@pytest.mark.parametrize("text, message", [
    ("modle: convnext_atto\n", "unknown key 'modle'"),
    ("epochs: three\n", "expected int"),
    ("lr-head: fast\n", "expected float"),
    ("resume: 1\n", "expected true/false"),
])
def test_bad_config_files_are_errors(tmp_path, text, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        parse_config(["--config", str(f)])


@pytest.mark.parametrize("changes, message", [
    ({"loader": "ffcv"}, "loader 'ffcv'"),
    ({"precision": "fp8"}, "precision"),
    ({"crop_size": 500}, "crop_size"),
    ({"head": "softmax"}, "head"),
    ({"force": True}, "--force only"),
    ({"curriculum": "high:2,mid:3"}, "unknown tier"),
])
def test_bad_values_are_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes).resolve(False)


def test_saved_config_round_trips():
    c = TrainConfig(model="convnext_atto", curriculum="high:1,all:2").resolve(False)
    again = config_from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c


@pytest.mark.slow
def test_cli_reports_a_bad_config_clearly(tmp_path):
    res = subprocess.run([sys.executable, "gzfast/train.py", "--loader", "ffcv", "--shards", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2 and "loader 'ffcv'" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "gzfast/train.py", "--shards", str(tmp_path / "none")],
                         cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2 and "no manifest" in res.stderr


def test_yaml_1_1_spellings_mean_what_people_type(tmp_path):
    """PyYAML reads `1e-4` (no dot) as text and `off` as false: a config file says what its writer meant."""
    f = tmp_path / "c.yaml"
    f.write_text("lr_backbone: 1e-4\nlr_head: 5E-4\ncompile: off\n")
    c = parse_config(["--config", str(f)])
    assert (c.lr_backbone, c.lr_head, c.compile) == (1e-4, 5e-4, "off")
    f.write_text("compile: on\n")
    assert parse_config(["--config", str(f)]).compile == "on"
    f.write_text("lr_backbone: fast\n")
    with pytest.raises(ConfigError, match="expected float"):
        parse_config(["--config", str(f)])
