"""Config: YAML + overrides -> typed sections, round trip, and one clear error per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from herbs.config import Config, load_config
from herbs.errors import ConfigError
from helpers import REPO

CONFIGS = REPO / "configs"


@pytest.mark.parametrize("name", ["cub200", "nabirds", "tiny"])
def test_shipped_configs_load_and_round_trip(tmp_path, name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert isinstance(config, Config) and config.log.name == name
    config.save(tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == config


def test_published_recipe_is_the_cub_config():
    c = load_config(CONFIGS / "cub200.yaml")
    assert (c.model.img_size, c.model.num_classes, c.model.fpn_size, c.model.num_selects) == (384, 200, 1536, [256, 128, 64, 32])
    assert (c.optim.name, c.optim.lr, c.optim.weight_decay, c.optim.nesterov, c.optim.warmup_epochs) == ("sgd", 5e-4, 3e-4, True, 8)
    assert (c.data.batch_size, c.train.global_batch_size, c.train.mixed_precision) == (8, 32, "fp16")
    assert load_config(CONFIGS / "nabirds.yaml").model.num_classes == 555


def test_overrides_are_typed():
    c = load_config(CONFIGS / "tiny.yaml", ["optim.lr=1e-3", "model.num_selects=[32, 16, 8, 8]", "log.name=my run", "train.max_steps=3"])
    assert c.optim.lr == 0.001 and isinstance(c.optim.lr, float)
    assert c.model.num_selects == [32, 16, 8, 8]
    assert c.log.name == "my run" and c.train.max_steps == 3
    c = load_config(CONFIGS / "tiny.yaml", ["data.mean=[1e-1, 0.5, 0.5]", "optim.betas=[9e-1, 0.999]"])  # 1e-1: text to PyYAML
    assert c.data.mean == [0.1, 0.5, 0.5] and c.optim.betas == [0.9, 0.999]
    c = load_config(CONFIGS / "tiny.yaml", ["train.output_dir=~/runs", "data.shards=~/shards/cub200"])  # no shell expands these
    assert c.train.output_dir == str(Path.home() / "runs") and c.data.shards == str(Path.home() / "shards" / "cub200")


def test_a_key_like_none_is_named_without_a_guess():
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "tiny.yaml", ["wrong.key=1"])
    assert str(err.value) == "unknown config section 'wrong'"


@pytest.mark.parametrize("override, value", [
    ("log.name=Off", "Off"), ("log.project=True", "True"), ("log.name=001", "001"), ("data.shards=2024", "2024"),
    ("train.mixed_precision=no", "no"), ("log.name=plain", "plain"), ('log.name="quoted"', "quoted"),
])
def test_text_keys_keep_the_text_typed_on_the_command_line(override, value):
    """YAML would read Off as false and 001 as 1: a key that holds text takes what was typed."""
    section, key = override.split("=")[0].split(".")
    assert getattr(getattr(load_config(CONFIGS / "tiny.yaml", [override]), section), key) == value


@pytest.mark.parametrize("override, value", [
    ("log.name=Off", "Off"), ("log.project=True", "True"), ("log.name=001", "001"), ("data.shards=2024", "2024"),
    ("train.mixed_precision=no", "no"), ("log.name='quoted'", "quoted"), ("log.name=1.50", "1.50"),
])
def test_text_keys_keep_the_text_written_in_the_config_file(tmp_path, override, value):
    """The same in a YAML file: `name: 001` is the run 001, not the number 1."""
    (section, key), written = override.split("=")[0].split("."), override.split("=")[1]
    path = tmp_path / "c.yaml"
    path.write_text(f"{section}:\n  {key}: {written}\noptim:\n  lr: 0.5\n")
    config = load_config(path)
    assert getattr(getattr(config, section), key) == value
    assert config.optim.lr == 0.5  # a number key still reads a number
    path.write_text("log:\n  wandb_mode: off\n")
    with pytest.raises(ConfigError, match="got 'off'"):
        load_config(path)


def test_yaml_anchors_and_merge_keys_are_read_as_yaml_reads_them(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("log: &log\n  project: p\n  name: a\ntrain:\n  output_dir: out\n"
                    "model:\n  <<: {pretrained: true}\n  pretrained: false\n")  # an explicit key wins over a merged one
    config = load_config(path)
    assert config.model.pretrained is False and config.log.name == "a"


@pytest.mark.parametrize("override, message", [
    (["optim.lrr=1"], "unknown config key 'optim.lrr' (did you mean 'lr'?)"),
    (["optimm.lr=1"], "unknown config section 'optimm' (did you mean 'optim'?)"),
    (["train.epochs=many"], "config key 'train.epochs' must be an integer, got 'many'"),
    (["optim.lr=fast"], "config key 'optim.lr' must be a number, got 'fast'"),
    (["data.hflip=3"], "config key 'data.hflip' must be true or false, got 3"),
    (["data.max_image_pixels=0"], "data.max_image_pixels must be at least 1, got 0"),
    (["model.num_selects=[16, 8, 8, 8]"], "at least 64 selected tokens"),
    (["model.num_selects=[800, 32, 16, 16]"], "layer1 is 800 but that tap of swin_tiny_patch4_window7_224 has only 784 tokens"),
    (["model.img_size=230"], "multiple of 32"),
    (["train.mixed_precision=fp8"], "no, bf16 or fp16"),
    (["data.worker_start=thread"], "data.worker_start must be one of forkserver, spawn, fork"),
    (["lr=1"], "section.key=value"),
    # the run directory is <output_dir>/<project>/<name>: neither may lead out of it
    (["log.name=.."], "log.name must be a relative path inside train.output_dir"),
    (["log.name=/etc"], "log.name must be a relative path inside train.output_dir"),
    (["log.name=a/../../x"], "log.name must be a relative path inside train.output_dir"),
    (["log.project=."], "log.project must be a relative path inside train.output_dir"),
    (['log.name="a\\tb"'], "log.name must be a relative path inside train.output_dir (names joined by '/', no '.' or '..', no control characters), got 'a\\tb'"),
    # lists whose values only the transforms or the optimizer would trip over, mid-run
    (["data.mean=[a, b, c]"], "data.mean and data.std must be 3 numbers each (R, G, B; std above 0), got ['a', 'b', 'c']"),
    (["data.std=[0.2, 0, 0.2]"], "data.mean and data.std must be 3 numbers each"),
    (["data.mean=[0.5, 0.5]"], "data.mean and data.std must be 3 numbers each"),
    (["optim.betas=[0.9]"], "optim.betas must be 2 numbers from 0 up to, not including, 1 (e.g. [0.9, 0.999]), got [0.9]"),
    (["optim.betas=[0.9, 1.5]"], "optim.betas must be 2 numbers"),
    (["model.num_selects=[true, 32, 16, 16]"], "model.num_selects must be 4 positive integers"),
    # not a number a run can use: each would stop with a traceback at start-up, or train on silently
    (["optim.lr=nan"], "config key 'optim.lr' must be a finite number, got 'nan'"),
    (["optim.warmup_epochs=inf"], "config key 'optim.warmup_epochs' must be a finite number, got 'inf'"),
    (["data.timeout=.inf"], "config key 'data.timeout' must be a finite number, got inf"),
    (["optim.momentum=-1"], "optim.momentum must be from 0 up to, not including, 1, got -1.0"),
    (["optim.weight_decay=-1"], "optim.weight_decay must be 0 or more, got -1.0"),
    (["optim.min_lr=1"], "optim.min_lr must be from 0 up to optim.lr (0.01), got 1.0"),
    (["model.combiner_dropout=1.5"], "model.combiner_dropout must be from 0 up to, not including, 1, got 1.5"),
    (["model.drop_path_rate=2"], "model.drop_path_rate must be from 0 up to, not including, 1, got 2.0"),
    (["train.seed=-1"], "train.seed must be from 0 to 4294967295, got -1"),
    (["model.img_size=-224"], "model.img_size must be at least 1, got -224"),
    (["loss.lambda_n=-1"], "loss.lambda_n must be 0 or more, got -1.0"),
    (["loss.temperature=0"], "loss.temperature must be above 0, got 0.0"),
    (["data.blur_p=5"], "data.blur_p is a probability, from 0 to 1; got 5.0"),
    (["data.shuffle_buffer=0"], "data.shuffle_buffer must be at least 1, got 0"),
    (["model.backbone_args={patch_size: 0}"], "model.backbone_args patch_size must be a whole number of at least 1, got 0"),
    (["model.backbone_args={patch_size:0}"], "model.backbone_args has the key 'patch_size:0' without a value"),
    (["model.backbone_args={depths: [1, 1, 1]}"], "model.backbone_args depths must be 4 whole numbers above 0 (one per Swin stage"),
])
def test_bad_settings_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "tiny.yaml", override)
    assert message in str(err.value)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    assert str(err.value) == f"config file '{tmp_path}' is a directory; pass a YAML file (see configs/)"
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("model:\n  1: 2\n")
    with pytest.raises(ConfigError, match="unknown config key 'model.1'"):
        load_config(bad)
    bad.write_bytes(b"model: {head: \xff}\n")  # saved in Latin-1
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(bad)
    bad.write_text("model:\n  head: herbs\n    fpn_size: 4\n")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line 3, column 13: "):
        load_config(bad)
    bad.write_text("train:\n  epochs: 5\noptim:\n  lr: 0.1\ntrain:\n  seed: 1\n")  # the second train: would drop epochs
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert str(err.value) == f"config file '{bad}' has the key 'train' twice (lines 1 and 5); keep one"
    bad.write_text("train: 5\n")
    with pytest.raises(ConfigError, match="config section 'train' must be a mapping of keys to values, got 5"):
        load_config(bad, ["train.seed=3"])


def test_overrides_may_also_come_after_the_options(capsys, tmp_path):
    from herbs.cli import main as herbs
    from herbs.train.commands import main as train_py

    assert herbs(["run-dir", str(CONFIGS / "tiny.yaml"), f"train.output_dir={tmp_path}", "--debug", "log.name=late"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "herbs-tiny" / "late")
    assert train_py(["--config", str(CONFIGS / "tiny.yaml"), "--resume", "auto", "model.no_such_key=1"]) == 2
    assert "model.no_such_key" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # anything else after the options is still refused
        herbs(["run-dir", str(CONFIGS / "tiny.yaml"), "--log", "--no-such-option"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --no-such-option" in err
    assert err.startswith("usage: herbs run-dir ")  # the command's usage, not the list of commands


def test_a_command_without_its_arguments_names_only_the_missing_ones(capsys):
    from herbs.cli import main as herbs

    with pytest.raises(SystemExit):
        herbs(["run-dir"])
    err = capsys.readouterr().err
    assert err.rstrip().endswith("error: the following arguments are required: CONFIG")  # the overrides are optional


def test_output_into_a_pipe_closed_early_ends_quietly(tmp_path):
    """`herbs status DIR | head`: the reader went away; no traceback over the user's terminal."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "herbs", "run-dir", str(CONFIGS / "tiny.yaml")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command writes its line
    assert proc.wait(timeout=60) == 141 and proc.stderr.read() == b""  # 128 + SIGPIPE, as a shell tool dies of it
