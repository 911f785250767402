"""Building the `Accelerator` from the herbs config, for one CPU process up to DeepSpeed on many nodes.

The herbs config is the single source of batch size, accumulation and precision: a DeepSpeed
JSON says "auto" for them and gets them from here; an explicit DeepSpeed value that disagrees
is an error, not a silent override.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs

from herbs.config import Config
from herbs.errors import ConfigError


def uses_deepspeed() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


def wants_cpu() -> bool:
    """CPU processes: no GPU here, or asked for. Never with DeepSpeed, which `cpu=True` would switch
    off (without a GPU DeepSpeed runs on the CPU by itself)."""
    if uses_deepspeed():
        return False
    return not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")


def build_accelerator(config: Config, run_dir, log_with=None) -> Accelerator:
    t = config.train
    cpu = wants_cpu()
    on_cpu = cpu or not torch.cuda.is_available()
    if on_cpu and t.mixed_precision == "fp16":
        raise ConfigError("train.mixed_precision is fp16 but this run has no GPU; use train.mixed_precision=bf16 or no on CPU")
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    # Under a launcher on CPU the process group must be gloo (DeepSpeed would otherwise ask for nccl).
    ds_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if ds_file and ds_file != "none" and not os.path.isfile(ds_file):
        raise ConfigError(
            f"the DeepSpeed config file '{ds_file}' does not exist here ({os.getcwd()}); the paths in "
            "configs/accelerate/*.yaml are relative to the repository root: launch from there or make the path absolute"
        )
    handlers = [InitProcessGroupKwargs(backend="gloo", timeout=timedelta(minutes=30))] if on_cpu and launched else []
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=t.mixed_precision,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        log_with=log_with,
        project_dir=str(run_dir),
        kwargs_handlers=handlers,
        step_scheduler_with_optimizer=False,
    )
    if accelerator.state.deepspeed_plugin is not None:
        fill_deepspeed_config(accelerator.state.deepspeed_plugin.deepspeed_config, config)
    return accelerator


def fill_deepspeed_config(ds: dict, config: Config) -> None:
    """Put the herbs values into the DeepSpeed config's "auto" fields; refuse contradictions."""
    wanted = {
        "train_micro_batch_size_per_gpu": config.data.batch_size,
        "gradient_accumulation_steps": config.train.gradient_accumulation_steps,
    }
    for key, value in wanted.items():
        current = ds.get(key, "auto")
        if current == "auto":
            ds[key] = value
        elif int(current) != value:
            herbs_key = "data.batch_size" if key.startswith("train_micro") else "train.gradient_accumulation_steps"
            raise ConfigError(
                f"the DeepSpeed config sets {key}={current} but the herbs config has {herbs_key}={value}; "
                f"set it to \"auto\" in the DeepSpeed JSON so the herbs config decides"
            )
    clip = config.optim.max_grad_norm
    if ds.get("gradient_clipping", "auto") == "auto":
        ds["gradient_clipping"] = clip if clip is not None else 0.0
    for precision in ("fp16", "bf16"):
        section = ds.get(precision)
        if isinstance(section, dict) and section.get("enabled") not in ("auto", None):
            if bool(section["enabled"]) != (config.train.mixed_precision == precision):
                raise ConfigError(
                    f"the DeepSpeed config sets {precision}.enabled={section['enabled']} but train.mixed_precision is "
                    f"{config.train.mixed_precision}; set it to \"auto\" in the DeepSpeed JSON"
                )
