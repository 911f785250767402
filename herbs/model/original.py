"""Checkpoints and configs of the original HERBS code (chou141253/FGVC-HERBS), HERBS_SPEC.md §9.

The original saves `{"model": state_dict, "optimizer": ..., "epoch": N}` with its own module
names and a timm 0.4.12 backbone; its config is one flat YAML mapping. Both are translated
into this project's names and the model is saved in the project's own format.
"""

from __future__ import annotations

import re
from pathlib import Path

from herbs.config import TAPS, Config, from_dict, read_yaml_mapping
from herbs.errors import CheckpointError, ConfigError, HerbsError
from herbs.model.checkpoint import save_model
from herbs.model.herbs_model import HERBSModel
from herbs.model.state_dict import load_matching, read_weights, unwrap_state_dict
from timm.models.swin_transformer import checkpoint_filter_fn

PUBLISHED_BACKBONE = "swin_large_patch4_window12_384"

# Original module name -> this project's, applied in order to every non-backbone key.
RENAMES = (
    (r"^fpn_down\.Proj_(layer\d)\.", r"top_down.proj.\1."),
    (r"^fpn_down\.Up_(layer\d)\.", r"top_down.up.\1."),
    (r"^fpn_classifier_down_(layer\d)\.", r"classifier_down.\1."),
    (r"^fpn_up\.Proj_(layer\d)\.", r"bottom_up.proj.\1."),
    (r"^fpn_up\.Down_(layer\d)\.", r"bottom_up.down.\1."),
    (r"^fpn_classifier_up_(layer\d)\.", r"classifier_up.\1."),
    (r"^combiner\.param_pool0\.", "combiner.pool0."),
    (r"^combiner\.param_pool1\.", "combiner.pool1."),
    (r"^combiner\.conv_q1\.", "combiner.conv_q."),
    (r"^combiner\.conv_k1\.", "combiner.conv_k."),
    (r"^combiner\.conv1\.", "combiner.conv."),
    (r"^combiner\.batch_norm1\.", "combiner.norm."),
    (r"^combiner\.adj1$", "combiner.adj"),
    (r"^combiner\.alpha1$", "combiner.alpha"),
)
# Swin hyper-parameters of the original `backbone:` section that go to timm as they are.
BACKBONE_ARGS = ("patch_size", "window_size", "embed_dim", "depths", "num_heads", "mlp_ratio", "qkv_bias",
                 "drop_rate", "attn_drop_rate", "ape", "patch_norm")


def config_from_original(path: str | Path) -> Config:
    """Translate the original code's flat YAML config into a herbs Config."""
    orig, _ = read_yaml_mapping(path, hint="pass the YAML the checkpoint was trained with")
    if "num_classes" not in orig:
        raise ConfigError(f"'{path}' is not a config of the original HERBS code (it has no num_classes)")
    if orig.get("model_name", "swin-t") != "swin-t":
        raise ConfigError(f"'{path}' uses model_name {orig['model_name']!r}; only the Swin HERBS model ('swin-t') is supported")
    for flag in ("use_fpn", "use_selection", "use_combiner"):
        if orig.get(flag, True) is False:
            raise ConfigError(f"'{path}' sets {flag}: false; only the full HERBS model (pyramid, selection, combiner) is supported")
    selects = orig.get("num_selects", {})
    backbone = orig.get("backbone") or {}
    model = {
        "backbone": PUBLISHED_BACKBONE,
        "pretrained": False,
        "img_size": orig.get("data_size", 384),
        "num_classes": orig["num_classes"],
        "fpn_size": orig.get("fpn_size", 1536),
        "num_selects": [selects[t] for t in TAPS] if isinstance(selects, dict) and selects else [256, 128, 64, 32],
        "backbone_args": {k: backbone[k] for k in BACKBONE_ARGS if k in backbone},
    }
    if "img_size" in backbone:
        model["img_size"] = backbone["img_size"]
    if "drop_path_rate" in backbone:
        model["drop_path_rate"] = backbone["drop_path_rate"]
    optim = {"name": str(orig.get("optimizer", "SGD")).lower(), "lr": orig.get("max_lr", 5e-4),
             "weight_decay": orig.get("wdecay", 3e-4), "warmup_steps": orig.get("warmup_batchs", 1500)}
    loss = {k: orig[k] for k in ("lambda_b0", "lambda_b", "lambda_s", "lambda_n", "lambda_c", "temperature") if k in orig}
    train = {"epochs": orig.get("max_epochs", 80), "gradient_accumulation_steps": orig.get("update_freq", 4),
             "mixed_precision": "fp16" if orig.get("use_amp", True) else "no"}
    data = {"batch_size": orig.get("batch_size", 8), "resize": max(510, model["img_size"] * 510 // 384)}
    # the original formats its names into its record paths: exp_name 001 (YAML's 1) is the run "1" there too
    names = {key: None if orig.get(old) is None else str(orig[old]) for key, old in (("project", "project_name"), ("name", "exp_name"))}
    log = {"project": names["project"] or "herbs", "name": names["name"], "wandb": bool(orig.get("use_wandb", False))}
    return from_dict({"model": model, "optim": optim, "loss": loss, "train": train, "data": data, "log": log})


def rename_original_keys(state: dict, backbone) -> dict:
    """Original module names -> herbs names; the timm 0.4.12 backbone layout -> timm >= 1.0."""
    if not any(k.startswith(("fpn_down.", "combiner.")) for k in state):
        raise CheckpointError("the file is not a checkpoint of the original HERBS code (it has no fpn_down/combiner weights)")
    swin = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    tables = {k: v.shape for k, v in backbone.state_dict().items() if k.endswith("relative_position_bias_table")}
    for key, value in swin.items():  # checked before timm's filter, which would interpolate them to the model's window
        if key in tables and value.shape != tables[key]:
            raise CheckpointError(f"backbone.{key} is {tuple(value.shape)} in the checkpoint but {tuple(tables[key])} in the model of "
                                  "the config; set the config's window_size (and img_size) to the ones the checkpoint was trained with")
    swin = checkpoint_filter_fn(swin, backbone)
    out = {f"backbone.{k}": v for k, v in swin.items() if not k.startswith(("head.", "norm."))}
    for key, value in state.items():
        if key.startswith("backbone."):
            continue
        for pattern, replacement in RENAMES:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def load_original(checkpoint: str | Path, config: Config) -> tuple[HERBSModel, dict]:
    """Build the model for `config` and fill it from an original checkpoint; returns (model, raw checkpoint)."""
    raw = read_weights(checkpoint)
    if not isinstance(raw, dict):
        raise CheckpointError(f"'{checkpoint}' is not a HERBS checkpoint (it holds a {type(raw).__name__})")
    try:
        state = unwrap_state_dict(raw)
        model = HERBSModel(config.model, load_pretrained=False)
        load_matching(model, rename_original_keys(state, model.backbone), f"checkpoint '{checkpoint}'")
    except CheckpointError as err:
        raise CheckpointError(str(err).replace("the file", f"'{checkpoint}'", 1)) from err
    return model, raw


def import_checkpoint(checkpoint: str | Path, original_config: str | Path, out_dir: str | Path,
                      class_names: list[str] | None = None) -> Path:
    """Convert an original HERBS checkpoint + its config into a herbs model directory."""
    config = config_from_original(original_config)
    if class_names is not None and len(class_names) != config.model.num_classes:
        raise HerbsError(f"the class list names {len(class_names)} classes but the model has {config.model.num_classes}; "
                         "pass one name per line, in label order, for every class")
    model, raw = load_original(checkpoint, config)
    return save_model(model.state_dict(), config, out_dir, class_names=class_names, source=str(checkpoint),
                      epoch=raw.get("epoch") if isinstance(raw.get("epoch"), int) else None)
