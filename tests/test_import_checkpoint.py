"""`herbs import-checkpoint`: original checkpoints in, herbs model directories out; bad input is one sentence."""

from __future__ import annotations


import hashlib
import shutil
import subprocess

import pytest
import torch
import yaml

from herbs.cli import main
from herbs.model.checkpoint import load_model


@pytest.fixture
def herbs(capsys):
    """Run the `herbs` command line in this process; returns (exit code, stdout, stderr)."""
    def run(*args) -> subprocess.CompletedProcess:
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit:  # --help
            code = exit.code
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)
    return run


def test_imported_reference_model_reproduces_the_original(reference_fixture, reference_checkpoint, tmp_path, herbs):
    out = tmp_path / "model"
    result = herbs("import-checkpoint", reference_checkpoint, "--config", reference_fixture.config, "--out", out)
    assert result.returncode == 0, result.stderr
    model, config, meta = load_model(out)
    assert meta["epoch"] == 0 and config.model.num_classes == 10
    assert meta["weights_sha256"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()  # checked on every load
    expected = reference_fixture.outputs_eval
    with torch.no_grad():
        got = model(reference_fixture.images)
    assert (got["comb_outs"] - expected["comb_outs"]).abs().max() <= 1e-4
    assert (got["layer1"] - expected["layer1"]).abs().max() <= 1e-4


def test_help_describes_the_commands(herbs):
    assert "import-checkpoint" in herbs("--help").stdout
    text = herbs("import-checkpoint", "--help").stdout
    assert "original HERBS code" in text and "--config" in text and "--out" in text


def _error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_mismatched_config_names_the_parameter(reference_fixture, reference_checkpoint, tmp_path, herbs):
    config = yaml.safe_load(reference_fixture.config.read_text())
    config["num_classes"] = 12
    path = tmp_path / "wrong.yaml"
    path.write_text(yaml.safe_dump(config))
    line = _error_line(herbs("import-checkpoint", reference_checkpoint, "--config", path, "--out", tmp_path / "m"))
    assert "classifier" in line and "(10," in line and "(12," in line
    assert not (tmp_path / "m").exists()


def test_another_window_size_is_a_mismatch_not_a_resized_model(reference_fixture, reference_checkpoint, tmp_path, herbs):
    """timm would interpolate the relative-position tables to the new window: a model the checkpoint never was."""
    config = yaml.safe_load(reference_fixture.config.read_text())
    config["backbone"]["window_size"] = 14
    path = tmp_path / "w14.yaml"
    path.write_text(yaml.safe_dump(config))
    line = _error_line(herbs("import-checkpoint", reference_checkpoint, "--config", path, "--out", tmp_path / "m"))
    assert "relative_position_bias_table" in line and "(169, 1)" in line and "window_size" in line
    assert not (tmp_path / "m").exists()


def test_file_that_is_not_a_herbs_checkpoint(reference_fixture, tmp_path, herbs):
    path = tmp_path / "resnet.pt"
    torch.save({"model": {"conv1.weight": torch.zeros(2, 3, 3, 3)}}, path)
    line = _error_line(herbs("import-checkpoint", path, "--config", reference_fixture.config, "--out", tmp_path / "m"))
    assert "not a checkpoint of the original HERBS code" in line and "resnet.pt" in line


def test_missing_file_and_pickle(reference_fixture, reference_checkpoint, tmp_path, herbs):
    line = _error_line(herbs("import-checkpoint", tmp_path / "none.pt", "--config", reference_fixture.config, "--out", tmp_path / "m"))
    assert "does not exist" in line
    line = _error_line(herbs("import-checkpoint", reference_checkpoint, "--config", tmp_path, "--out", tmp_path / "m"))
    assert line.endswith(f"config file '{tmp_path}' is a directory; pass a YAML file (see configs/)")
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "hook": object()}, evil)
    line = _error_line(herbs("import-checkpoint", evil, "--config", reference_fixture.config, "--out", tmp_path / "m"))
    assert "weights-only" in line


def test_an_out_that_is_not_a_model_directory_is_never_deleted(reference_fixture, reference_checkpoint, tmp_path, herbs):
    mine = tmp_path / "mymodels"
    (mine / "important").mkdir(parents=True)
    (mine / "important" / "notes.txt").write_text("x")
    (tmp_path / "out.txt").write_text("y")
    for out in (mine, tmp_path / "out.txt"):
        line = _error_line(herbs("import-checkpoint", reference_checkpoint, "--config", reference_fixture.config, "--out", out))
        assert f"'{out}' exists and is not a herbs model directory" in line
    assert (mine / "important" / "notes.txt").read_text() == "x" and (tmp_path / "out.txt").read_text() == "y"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mymodels", "out.txt"]  # nothing hidden aside either
    model = tmp_path / "model"  # a herbs model directory is replaced, as a re-import means
    for _ in range(2):
        assert herbs("import-checkpoint", reference_checkpoint, "--config", reference_fixture.config, "--out", model).returncode == 0
    shutil.copy(reference_checkpoint, model / "best.pt")  # the user's own file, in the model directory
    line = _error_line(herbs("import-checkpoint", model / "best.pt", "--config", reference_fixture.config, "--out", model))
    assert f"'{model}' holds best.pt, which is not part of a herbs model" in line and (model / "best.pt").is_file()


def test_a_class_list_of_another_length_is_refused(reference_fixture, reference_checkpoint, tmp_path, herbs):
    (tmp_path / "classes.txt").write_text("a\n\nb\nc\n")
    line = _error_line(herbs("import-checkpoint", reference_checkpoint, "--config", reference_fixture.config, "--out", tmp_path / "m",
                             "--classes", tmp_path / "classes.txt"))
    assert "the class list names 3 classes but the model has 10" in line and not (tmp_path / "m").exists()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        main(["--debug", "import-checkpoint", str(tmp_path / "x.pt"), "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "m")])


def test_config_without_backbone_means_published_swin_large(tmp_path):
    from herbs.model.original import config_from_original

    path = tmp_path / "cub.yaml"
    path.write_text(yaml.safe_dump({"num_classes": 200, "data_size": 384, "fpn_size": 1536,
                                    "num_selects": {"layer1": 256, "layer2": 128, "layer3": 64, "layer4": 32}}))
    config = config_from_original(path)
    assert config.model.backbone == "swin_large_patch4_window12_384" and config.model.backbone_args == {}
    assert (config.model.img_size, config.model.num_selects) == (384, [256, 128, 64, 32])


def test_an_experiment_named_with_digits_keeps_its_name(tmp_path):
    from herbs.model.original import config_from_original

    path = tmp_path / "cub.yaml"
    path.write_text("num_classes: 200\nproject_name: 2024\nexp_name: 001\n")  # YAML reads both as numbers
    config = config_from_original(path)
    assert (config.log.project, config.log.name) == ("2024", "1")
