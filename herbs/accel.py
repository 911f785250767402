"""Building the `Accelerator` from the herbs config, for one CPU process up to DeepSpeed on many nodes.
Training and evaluation both start their processes with it.

The herbs config is the single source of batch size, accumulation and precision: a DeepSpeed
JSON says "auto" for them and gets them from here; an explicit DeepSpeed value that disagrees
is an error, not a silent override, found before any process group starts.

Mixed precision means the same thing in every mode: fp32 weights (and optimizer state, and
BatchNorm statistics), the forward pass under `torch.autocast`, the loss in fp32, and for fp16 a
dynamic loss scaler. One process and DDP get it from Accelerate (autocast around the model's
forward, GradScaler). Under DeepSpeed it is DeepSpeed's own `torch_autocast` mode, not its
`fp16`/`bf16` modes: those cast the weights themselves to half precision (BatchNorm statistics
and the selector's ranking included), and the uint8-normalised inputs would need casting by
hand; torch_autocast keeps fp32 master weights, autocasts inside the engine's forward, and
scales fp16 losses with a GradScaler in every ZeRO stage.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

from herbs.config import Config
from herbs.errors import ConfigError

AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def uses_deepspeed() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


def launched_processes() -> int:
    """Processes of this run as the launcher announces them (accelerate launch, torchrun, srun via accelerate)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def wants_cpu() -> bool:
    """CPU processes: no GPU here, or asked for. Never with DeepSpeed, which `cpu=True` would switch
    off (without a GPU DeepSpeed runs on the CPU by itself)."""
    if uses_deepspeed():
        return False
    return not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")


def deepspeed_file() -> str | None:
    ds_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if not uses_deepspeed() or not ds_file or ds_file == "none":
        return None
    if not os.path.isfile(ds_file):
        raise ConfigError(
            f"the DeepSpeed config file '{ds_file}' does not exist here ({os.getcwd()}); the paths in "
            "configs/accelerate/*.yaml are relative to the repository root: launch from there or make the path absolute"
        )
    return ds_file


def build_accelerator(config: Config, run_dir, log_with=None, accumulation: int = 1,
                      find_unused_parameters: bool = False) -> Accelerator:
    """Everything that can be refused is checked before `Accelerator()` starts the process group."""
    t = config.train
    cpu = wants_cpu()
    on_cpu = cpu or not torch.cuda.is_available()
    if on_cpu and t.mixed_precision == "fp16":
        raise ConfigError("train.mixed_precision is fp16 but this run has no GPU; use train.mixed_precision=bf16 or no on CPU")
    ds_file = deepspeed_file()
    if ds_file is not None:
        fill_deepspeed_config(read_deepspeed_json(ds_file), config, accumulation)  # refuses contradictions now
    # Under a launcher on CPU the process group must be gloo (DeepSpeed would otherwise ask for nccl).
    handlers = [InitProcessGroupKwargs(backend="gloo", timeout=timedelta(minutes=30))] if on_cpu and launched_processes() > 1 else []
    if find_unused_parameters:  # a zero loss weight leaves its head without gradients (DDP must be told)
        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
    accelerator = Accelerator(
        cpu=cpu,
        # DeepSpeed's precision is its torch_autocast section, filled below; Accelerate's "bf16"/"fp16"
        # would switch on DeepSpeed's half-precision weights instead.
        mixed_precision="no" if ds_file is not None else t.mixed_precision,
        gradient_accumulation_steps=accumulation,
        log_with=log_with,
        project_dir=str(run_dir),
        kwargs_handlers=handlers,
        step_scheduler_with_optimizer=False,
    )
    if accelerator.state.deepspeed_plugin is not None:
        fill_deepspeed_config(accelerator.state.deepspeed_plugin.deepspeed_config, config, accumulation)
    return accelerator


def read_deepspeed_json(path: str) -> dict:
    try:
        return json.loads(open(path).read())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"the DeepSpeed config file '{path}' cannot be read as JSON ({err}); fix it") from err


def fill_deepspeed_config(ds: dict, config: Config, accumulation: int) -> None:
    """Put the herbs values into the DeepSpeed config's "auto" fields; refuse contradictions."""
    wanted = {
        "train_micro_batch_size_per_gpu": (config.data.batch_size, "data.batch_size"),
        "gradient_accumulation_steps": (accumulation, "train.gradient_accumulation_steps (as derived from train.global_batch_size)"),
    }
    for key, (value, herbs_key) in wanted.items():
        current = ds.get(key, "auto")
        if current == "auto":
            ds[key] = value
        elif int(current) != value:
            raise ConfigError(
                f"the DeepSpeed config sets {key}={current} but the herbs config has {herbs_key}={value}; "
                f"set it to \"auto\" in the DeepSpeed JSON so the herbs config decides"
            )
    if config.train.ema_decay and ds.get("zero_optimization", {}).get("stage") == 3:
        raise ConfigError("train.ema_decay is not supported under DeepSpeed ZeRO-3, which partitions the weights it would average; "
                          "use ZeRO-2 (configs/accelerate/zero2.yaml) or DDP, or set train.ema_decay=0")
    clip = config.optim.max_grad_norm
    if ds.get("gradient_clipping", "auto") == "auto":
        ds["gradient_clipping"] = clip if clip is not None else 0.0
    precision = config.train.mixed_precision
    for mode in ("fp16", "bf16"):
        section = ds.get(mode)
        if isinstance(section, dict) and section.get("enabled") not in ("auto", None, False):
            raise ConfigError(
                f"the DeepSpeed config sets {mode}.enabled={section['enabled']}, DeepSpeed's half-precision weights, "
                f"which herbs does not use (train.mixed_precision={precision} runs under DeepSpeed's torch_autocast); "
                f"set it to \"auto\" in the DeepSpeed JSON"
            )
        if isinstance(section, dict):
            section["enabled"] = False
    autocast = {"enabled": precision != "no", **({"dtype": AUTOCAST_DTYPES[precision]} if precision != "no" else {})}
    given = ds.get("torch_autocast", "auto")
    if given != "auto" and {k: given.get(k) for k in autocast} != autocast:
        raise ConfigError(
            f"the DeepSpeed config sets torch_autocast={given} but train.mixed_precision is {precision}; "
            "leave torch_autocast out of the DeepSpeed JSON (or \"auto\") so the herbs config decides"
        )
    ds["torch_autocast"] = {**(given if isinstance(given, dict) else {}), **autocast}
