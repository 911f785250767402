"""This project's exported model format: a directory with `model.safetensors`, the resolved
`config.yaml` and `meta.json` (class names, where the weights came from, the sha256 of the
weights, checked on every load: a damaged copy is one sentence, not a crash or wrong numbers).

Every `herbs` command that needs a trained model reads this format. Writes go to a temporary
directory that is renamed into place, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from herbs.atomic import in_progress, replace_dir
from herbs.config import Config, load_config
from herbs.data.tario import sha256_file
from herbs.errors import CheckpointError
from herbs.model.build import build_model
from herbs.model.tapped import TappedModel
from herbs.model.state_dict import load_matching
from herbs.run import BEST_MODEL, CHECKPOINTS_DIR, EMA_MODEL, STATE_FILE

FORMAT = "herbs-model"
WEIGHTS, CONFIG, META = "model.safetensors", "config.yaml", "meta.json"
MODEL_FILES = (WEIGHTS, CONFIG, META)  # everything save_model writes
CHECKSUM = "weights_sha256"  # in meta.json; directories written before it was recorded load unchecked


def save_model(state_dict: dict, config: Config, out_dir: str | Path, **meta) -> Path:
    """Write a model's state dict (on any device) with its config; `meta` adds JSON fields such as class_names."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir / META).is_file() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        # the model replaces the whole directory: never one of the user's
        raise CheckpointError(f"'{out_dir}' exists and is not a herbs model directory, which writing the model there would delete; "
                              "pass a new or empty directory, or a herbs model directory to replace")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = in_progress(out_dir, str(os.getpid()))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    try:
        save_file(state, str(tmp / WEIGHTS))
        config.save(tmp / CONFIG)
        (tmp / META).write_text(json.dumps({"format": FORMAT, "version": 1, **meta, CHECKSUM: sha256_file(tmp / WEIGHTS)}, indent=1))
    except BaseException:  # e.g. a full disk: leave nothing half-written behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out_dir)
    return out_dir


def read_meta(model_dir: str | Path) -> dict:
    model_dir = Path(model_dir)
    meta_path = model_dir / META
    if model_dir.is_file():
        raise CheckpointError(f"'{model_dir}' is a file; pass a model directory holding {WEIGHTS} (a run's best/, or one written by `herbs import-checkpoint`)")
    if not model_dir.is_dir():
        raise CheckpointError(f"model directory '{model_dir}' does not exist; pass a directory written by herbs")
    if not meta_path.is_file() or not (model_dir / WEIGHTS).is_file() or not (model_dir / CONFIG).is_file():
        run = model_dir if (model_dir / CHECKPOINTS_DIR).is_dir() else model_dir.parent.parent if (model_dir / STATE_FILE).is_file() else None
        if run is not None:  # what training wrote: its models are beside its checkpoints
            raise CheckpointError(f"'{model_dir}' is a training run's {'directory' if run == model_dir else 'checkpoint'}, not a model; "
                                  f"pass the model it exported, {run / BEST_MODEL} (or {run / EMA_MODEL})")
        raise CheckpointError(
            f"'{model_dir}' is not a herbs model directory (it needs {WEIGHTS}, {CONFIG} and {META}); "
            "for a checkpoint of the original HERBS code run `herbs import-checkpoint` first"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"'{meta_path}' is not valid JSON; the model directory is damaged") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"'{meta_path}' holds no JSON object; the model directory is damaged")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"'{meta_path}' does not describe a herbs model (format {meta.get('format')!r})")
    return meta


def load_model(model_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[TappedModel, Config, dict]:
    """Build the model from the directory's config and load its weights; returns (model in eval mode, config, meta)."""
    model_dir = Path(model_dir)
    meta = read_meta(model_dir)
    config = load_config(model_dir / CONFIG)
    model = build_model(config.model, load_pretrained=False)
    if CHECKSUM in meta and sha256_file(model_dir / WEIGHTS) != meta[CHECKSUM]:
        raise CheckpointError(f"'{model_dir / WEIGHTS}' weights do not match the sha256 recorded in {META}; "
                              "the file is damaged: re-export or re-copy it")
    try:
        state = load_file(str(model_dir / WEIGHTS), device=str(map_location))
    except Exception as err:
        raise CheckpointError(f"'{model_dir / WEIGHTS}' cannot be read ({err}); the model directory is damaged") from err
    load_matching(model, state, f"model '{model_dir}'")
    return model.to(map_location).eval(), config, meta
