"""Sweep files: grid and zipped lists, names from values, overrides that parse back to the same values."""

from __future__ import annotations

import pytest
import yaml

from herbs.config import load_config, parse_override
from herbs.errors import LaunchError
from herbs.launch import sweep


def expand_text(text: str) -> list[sweep.Point]:
    return sweep.name_points(sweep.expand(sweep.parse_sweep(yaml.safe_load(text))))


def test_grid_times_zip_in_file_order():
    points = expand_text("""
        grid:
          optim.lr: [0.1, 0.01]
          train.seed: [0, 1]
        zip:
          optim.warmup_steps: [10, 20, 30]
          optim.name: [sgd, adamw, sgd]
    """)
    assert len(points) == 2 * 2 * 3
    assert points[0].values == {"optim.lr": 0.1, "train.seed": 0, "optim.warmup_steps": 10, "optim.name": "sgd"}
    assert points[1].values == {"optim.lr": 0.1, "train.seed": 0, "optim.warmup_steps": 20, "optim.name": "adamw"}
    assert points[-1].values == {"optim.lr": 0.01, "train.seed": 1, "optim.warmup_steps": 30, "optim.name": "sgd"}
    assert points[0].name == "lr-0.1_seed-0_warmup_steps-10_name-sgd"
    assert len({p.name for p in points}) == len(points)


def test_several_zip_groups_are_crossed():
    points = expand_text("""
        zip:
          - {optim.lr: [0.1, 0.2], optim.warmup_steps: [1, 2]}
          - {train.seed: [5, 6, 7]}
    """)
    assert [(p.values["optim.lr"], p.values["train.seed"]) for p in points] == [
        (0.1, 5), (0.1, 6), (0.1, 7), (0.2, 5), (0.2, 6), (0.2, 7)]


def test_clashing_short_names_use_the_full_key():
    points = expand_text("grid: {log.name: [x], optim.name: [sgd, adamw]}")
    assert [p.name for p in points] == ["log.name-x_optim.name-sgd", "log.name-x_optim.name-adamw"]


@pytest.mark.parametrize("value", [
    "with space", "it's \"quoted\"", "true", "1", "null", "", " padded ", "a: b", "#hash", "[x]", "1e-3",
    0.001, 1e-5, 3, True, None, [64, 32, 16, 16], {"embed_dim": 16, "depths": [1, 1]}, "line\nbreak"])
def test_overrides_parse_back_to_the_swept_value(value):
    section, key, parsed = parse_override(sweep.override("model.x", value))
    assert (section, key) == ("model", "x")
    assert parsed == value and type(parsed) is type(value)


def test_plain_strings_stay_readable():
    assert sweep.override("log.name", "it's a \"run\"") == "log.name=it's a \"run\""
    assert sweep.override("log.name", "true") == 'log.name="true"'


@pytest.mark.parametrize("text, message", [
    ("grid: {optim.lr: 0.1}", "must map to a non-empty list"),
    ("grid: {optim.lr: []}", "must map to a non-empty list"),
    ("grid: {lr: [1]}", "of the form section.key"),
    ("zip: {optim.lr: [1, 2], train.seed: [1]}", "must have one length (optim.lr has 2, train.seed has 1)"),
    ("grid: {optim.lr: [1]}\nzip: {optim.lr: [2]}", "appears twice"),
    ("grids: {optim.lr: [1]}", "unknown section 'grids'"),
    ("[1, 2]", "must be a mapping"),
    ("grid: {}\nzip: []", "s.yaml expands to no jobs; give at least one key with values under 'grid' or 'zip'"),
    ("", "s.yaml expands to no jobs"),
    ("grid: {train.seed: [1, 1]}", "the sweep gives train.seed=1 twice; list each value once"),
    ("zip: {optim.lr: [1, 1], train.seed: [2, 2]}", "the sweep gives optim.lr=1 train.seed=2 twice"),
])
def test_bad_sweeps_say_what_is_wrong(text, message):
    with pytest.raises(LaunchError) as err:
        sweep.expand(sweep.parse_sweep(yaml.safe_load(text), "s.yaml"))
    assert message in str(err.value)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(LaunchError, match="does not exist"):
        sweep.load_sweep(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [unclosed\n")
    with pytest.raises(LaunchError, match="is not valid YAML"):
        sweep.load_sweep(bad)
    bad.write_text("grid: {}\n")
    with pytest.raises(LaunchError) as err:
        sweep.load_sweep(bad)
    assert str(err.value).startswith(f"sweep file '{bad}' expands to no jobs")


def test_long_names_are_cut_but_stay_unique():
    points = expand_text("grid: {log.project: ['" + "x" * 100 + "a', '" + "x" * 100 + "b']}")
    assert all(len(p.name) <= 80 for p in points) and points[0].name != points[1].name


def test_names_made_unique_never_take_a_name_another_point_has():
    names = [p.name for p in expand_text("grid: {log.name: ['a b', 'a-b', 'a-b-1']}")]
    assert len(set(names)) == 3 and "name-a-b-1" in names


def test_broken_text_is_one_sentence(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_bytes(b"grid: {train.seed: [\xff]}\n")
    with pytest.raises(LaunchError, match="is not UTF-8 text"):
        sweep.load_sweep(bad)


def test_a_sweep_file_reads_as_a_config_file_does(tmp_path):
    """A key given twice is refused, not the last kept; a key that holds text takes its values as written."""
    path = tmp_path / "s.yaml"
    path.write_text("grid: {optim.lr: [0.1], optim.lr: [0.2]}\n")
    with pytest.raises(LaunchError) as err:
        sweep.load_sweep(path)
    assert str(err.value) == f"sweep file '{path}' has the key 'optim.lr' twice (lines 1 and 1); keep one"
    path.write_text("grid:\n  train.mixed_precision: [no, bf16]\n  log.name: [001, 'x']\nzip:\n  - {optim.lr: [0.1, 1e-3], log.project: [off, 2024]}\n")
    points = sweep.expand(sweep.load_sweep(path))
    assert points[0].values == {"train.mixed_precision": "no", "log.name": "001", "optim.lr": 0.1, "log.project": "off"}
    assert points[-1].values == {"train.mixed_precision": "bf16", "log.name": "x", "optim.lr": "1e-3", "log.project": "2024"}
    config = load_config(None, points[0].overrides())
    assert (config.train.mixed_precision, config.log.name, config.log.project) == ("no", "001", "off")
    assert load_config(None, points[-1].overrides()).optim.lr == 0.001
    with pytest.raises(LaunchError) as err:
        sweep.load_sweep(tmp_path)
    assert str(err.value) == f"sweep file '{tmp_path}' is a directory; pass a YAML file"


def test_a_sweep_too_large_is_refused_before_its_points_are_made():
    """10 keys of 10 values: 10**10 points, which took hours and all memory to build only to be refused."""
    grid = {f"optim.k{i}": list(range(10)) for i in range(10)}
    assert sweep.count(sweep.parse_sweep({"grid": grid, "zip": {"train.seed": [1, 2]}})) == 2 * 10**10
