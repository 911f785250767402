"""Typed run configuration: YAML file -> dataclasses, `section.key=value` overrides, validation.

Every setting lives in one section dataclass below, documented where it is declared. The
defaults are the published CUB-200-2011 recipe (HERBS_SPEC.md §8), so a YAML file only
states what differs. `load_config` is the single way a run gets its config; `to_yaml` writes
the resolved config that `load_config` reads back unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from herbs.errors import ConfigError, HerbsError

TAPS = ("layer1", "layer2", "layer3", "layer4")
HEADS = ("herbs", "linear")  # model.head
LR_SCALING = ("none", "linear", "sqrt")
WORKER_START_METHODS = ("forkserver", "spawn", "fork")  # multiprocessing start methods for loader workers (data.worker_start)
# A section that a run writes into its config.yaml (what it derived: global batch, accumulation, peak LR,
# warmup steps) and that reading the file back ignores: it is recomputed for the processes at hand.
DERIVED = "derived"


@dataclass
class ModelConfig:
    """The HERBS model: a timm backbone plus the pyramid, selector and combiner."""

    # A timm model name: a Swin Transformer (tapped as the original code taps it), or any model
    # with a feature pyramid of four or more levels, whose last four are tapped (ResNet, ConvNeXt,
    # EfficientNet, ...; a ViT/EVA/DeiT with backbone_args.out_indices naming four of its blocks).
    backbone: str = "swin_large_patch4_window12_384"
    # herbs: the HERBS pyramids, selector and combiner (HERBS_SPEC.md). linear: the baseline it is compared
    # with, one linear classifier on the last tap's averaged tokens, trained by the cross-entropy of loss.lambda_c.
    head: str = "herbs"
    # Extra keyword arguments for `timm.create_model` (embed_dim, depths, num_heads, window_size,
    # out_indices, ...): how tiny test configs shrink the backbone.
    backbone_args: dict = field(default_factory=dict)
    pretrained: bool = True  # timm weights for `backbone` (hub or local HF cache)
    pretrained_file: Optional[str] = None  # local .pth/.safetensors backbone weights; wins over `pretrained`
    img_size: int = 384  # square input side in pixels
    num_classes: int = 200
    fpn_size: int = 1536  # F: width of the pyramid features
    num_selects: list = field(default_factory=lambda: [256, 128, 64, 32])  # foreground tokens kept per tap
    drop_path_rate: float = 0.1  # backbone stochastic depth
    combiner_dropout: float = 0.1
    # Keep BatchNorm layers in eval mode while training (running statistics used, not updated):
    # for fine-tuning with very small per-GPU batches, and for runs whose result must not depend on how
    # the global batch is split across processes.
    freeze_batchnorm: bool = False
    grad_checkpointing: bool = False  # recompute backbone activations in backward to save memory
    # torch's scaled_dot_product_attention in the Swin windows (timm's "fused" attention): faster and
    # leaner on GPUs; outputs move by ~1e-6 (HERBS_SPEC.md §10). Off: timm's default, bit-exact with the original.
    fused_attention: bool = False
    # The eight per-token classifiers as matrix products over the flattened tokens instead of the
    # original's Conv1d on transposed copies (herbs.model.pyramid.TokenClassifier; the same
    # parameters): faster steps on CPU, outputs move by ~1e-6 (HERBS_SPEC.md §10). Off: bit-exact.
    matmul_heads: bool = False


@dataclass
class DataConfig:
    """Where the shards are and how images become batches."""

    # Where manifest.json and the tar shards are: a directory, https://host/dir, pipe:<command with {name}>,
    # s3://bucket/dir, gs://bucket/dir (herbs/data/location.py)
    shards: str = "shards/cub200"
    train_split: str = "train"
    val_split: str = "val"  # model selection; never the test split
    test_split: str = "test"  # evaluated once, at the end of training
    batch_size: int = 8  # micro-batch per process
    eval_batch_size: int = 16
    num_workers: int = 4  # decoding/augmentation worker processes per training process
    worker_start: str = "forkserver"  # how workers start: forkserver (safe beside the process group's threads), spawn or fork
    shuffle_buffer: int = 1000  # samples held for shuffling inside each worker
    # Check every shard's sha256: local shards once before training; remote ones as they are fetched (whole)
    verify_checksums: bool = True
    timeout: float = 60.0  # remote shards: seconds a read may wait for data before the attempt fails
    retries: int = 3  # remote shards: attempts after a transient failure (1, 2, 4 s apart) before its samples are skipped
    cache_dir: Optional[str] = None  # keep fetched remote shards here, verified, and read them from here in later epochs
    resize: int = 510  # images are resized to resize x resize before cropping to model.img_size
    # Images of more pixels are skipped and named, never decoded (decompression bombs): in training, eval,
    # predict and heatmap. Default: PIL's own refusal threshold, about 13,400 x 13,400.
    max_image_pixels: int = 178_956_970
    hflip: bool = True
    blur_p: float = 0.1  # Gaussian blur (kernel 5, sigma 0.1-5) probability
    sharpness_p: float = 0.1  # sharpness x1.5 probability
    # Mixup / CutMix of each training micro-batch with itself reversed (off: the published recipe).
    # A Beta(alpha, alpha) mixing weight; with both on, CutMix is taken with mixup_switch_prob.
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixup_prob: float = 1.0  # share of micro-batches mixed
    mixup_switch_prob: float = 0.5
    mean: list = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class LossConfig:
    """HERBS loss weights (HERBS_SPEC.md §6); a zero weight skips its term."""

    temperature: float = 64.0  # T0; halved every `temperature_halve_every` epochs
    temperature_halve_every: int = 10
    lambda_b0: float = 1.375  # high-temperature refinement (KL between the two pyramids)
    lambda_b: float = 0.3  # per-tap cross-entropy
    lambda_s: float = 0.0  # cross-entropy of the selected tokens
    lambda_n: float = 5.0  # background suppression
    lambda_c: float = 1.0  # combiner cross-entropy
    # Label smoothing of the cross-entropy terms' targets (0: off, the published recipe).
    label_smoothing: float = 0.0


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (warmup then cosine, per optimizer step)."""

    name: str = "sgd"  # sgd | adamw
    lr: float = 5e-4  # peak learning rate
    min_lr: float = 0.0  # learning rate at the end of the cosine
    momentum: float = 0.9  # sgd
    nesterov: bool = True  # sgd
    betas: list = field(default_factory=lambda: [0.9, 0.999])  # adamw
    weight_decay: float = 3e-4
    # Linear warmup, in epochs of optimizer steps at the run's global batch: the same share of the run
    # on any number of processes. The published 1500 iterations of 32 images are 8 epochs of CUB's 5,994.
    warmup_epochs: float = 8.0
    warmup_steps: Optional[int] = None  # an exact count of warmup optimizer steps instead (wins when set)
    # How the peak LR follows a global batch other than train.global_batch_size: none | linear | sqrt
    # (lr x ratio, lr x sqrt(ratio)). Only used where the global batch cannot be kept.
    lr_scaling: str = "none"
    max_grad_norm: Optional[float] = None  # gradient clipping; None disables it


@dataclass
class TrainConfig:
    """The training run: length, precision, accumulation, checkpoints."""

    epochs: int = 80
    max_steps: Optional[int] = None  # stop after this many optimizer steps (debug and smoke runs)
    # Images per optimizer step over all processes: the batch that optim.lr and the warmup are stated for.
    # The published recipe is 8 x 4 accumulated = 32 on one GPU; on N processes herbs keeps it by
    # accumulating global / (data.batch_size x N) micro-batches (herbs/train/batch.py).
    global_batch_size: Optional[int] = 32
    # Micro-batches per optimizer step. None: derived from global_batch_size. A number fixes it; the
    # global batch is then data.batch_size x this x processes, and optim.lr_scaling says how the LR follows.
    gradient_accumulation_steps: Optional[int] = None
    mixed_precision: str = "fp16"  # no | bf16 | fp16
    seed: int = 42
    # torch threads per process (null: torch's default, one per core). The thread count changes how
    # sums are split, so the last bits of every step, and over a run the result, depend on it.
    threads: Optional[int] = None
    eval_every: int = 1  # epochs between validation runs
    checkpoint_every: int = 500  # optimizer steps between checkpoints
    # Also checkpoint when this many minutes have passed since the last checkpoint (None: off), so a
    # kill -9 loses at most that much work whatever the step time.
    checkpoint_minutes: Optional[float] = None
    keep_checkpoints: int = 3  # newest step checkpoints kept on disk
    max_nonfinite_steps: int = 10  # stop after this many non-finite losses in a row
    compile: bool = False  # torch.compile the model
    # An exponential moving average of the weights, updated after every optimizer step (0: off, the
    # published recipe). Its decay warms up as (1 + n) / (10 + n) after n updates, up to this value.
    ema_decay: float = 0.0
    select_best: str = "raw"  # which weights best/ holds, chosen by their val ensemble top-1: raw | ema
    output_dir: str = "runs"  # run directory is <output_dir>/<log.project>/<log.name>
    debug: bool = False  # one process, no workers, anomaly detection, deterministic algorithms


@dataclass
class LogConfig:
    """Metrics and experiment tracking."""

    project: str = "herbs"
    name: Optional[str] = None  # run name; defaults to the config file's stem
    every: int = 50  # optimizer steps between logged metrics
    wandb: bool = True
    wandb_mode: str = "auto"  # auto (offline without an API key) | online | offline


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path, derived: dict | None = None) -> None:
        """The config as YAML; `derived` (what a run computed from it) goes into its own section."""
        text = self.to_yaml()
        if derived:
            text += yaml.safe_dump({DERIVED: derived}, sort_keys=False)
        Path(path).write_text(text)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _closest(name: str, choices) -> str:
    match = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)  # str: a YAML key may be a number
    return f" (did you mean '{match[0]}'?)" if match else ""


def _section_classes() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {name: hints[name] for name in SECTIONS}


TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}


def _float_text(item: Any, finite: bool = True) -> Any:
    """PyYAML (YAML 1.1) reads 1e-3, without a dot, as text: that text as its number (`finite`: unless nan or inf)."""
    if not isinstance(item, str):
        return item
    try:
        number = float(item)
    except ValueError:
        return item
    return number if math.isfinite(number) or not finite else item


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML value to the declared field type, or say which key has the wrong type."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        number = _float_text(value, finite=False)
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            if not math.isfinite(number):  # nan and inf pass every `< 0` check, then fail mid-run
                raise ConfigError(f"config key '{where}' must be a finite number, got {value!r}; fix it in the YAML file or the override")
            return float(number)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation is list:
        if isinstance(value, (list, tuple)):
            return [_float_text(item) for item in value]
    elif annotation is dict:
        if isinstance(value, dict):
            return dict(value)
    else:
        return value
    wanted = TYPE_WORDS.get(annotation, f"a {getattr(annotation, '__name__', annotation)}")
    raise ConfigError(f"config key '{where}' must be {wanted}, got {value!r}; fix it in the YAML file or the override")


def _apply(section_obj: Any, section: str, values: dict) -> None:
    hints = typing.get_type_hints(type(section_obj))
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"unknown config key '{section}.{key}'{_closest(key, hints)}")
        setattr(section_obj, key, _coerce(value, hints[key], f"{section}.{key}"))


def from_dict(data: dict) -> Config:
    """Build a validated Config from nested dicts (a parsed YAML file)."""
    config = Config()
    classes = _section_classes()
    for section, values in (data or {}).items():
        if section == DERIVED:
            continue
        if section not in classes:
            raise ConfigError(f"unknown config section '{section}'{_closest(section, classes)}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{section}' must be a mapping of keys to values, got {values!r}")
        _apply(getattr(config, section), section, values)
    # A YAML value or an override's is not expanded by the shell: ~/runs would be a directory named ~ here.
    config.train.output_dir, config.data.shards = (os.path.expanduser(p) for p in (config.train.output_dir, config.data.shards))
    validate(config)
    return config


def parse_command_line(parser: argparse.ArgumentParser, argv: Optional[list[str]] = None) -> argparse.Namespace:
    """`parser.parse_args(argv)`, where a command's `section.key=value` overrides may also follow its options.
    argparse takes a positional list in one run, and its `parse_intermixed_args` refuses subcommands. Anything else is
    refused with the usage of the command it followed (`command_parser`, set by herbs.cli)."""
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and not any(item.startswith("-") for item in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def parse_override(text: str) -> tuple[str, str, Any]:
    """`section.key=value` -> (section, key, YAML-parsed value)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override '{text}' is not of the form section.key=value (e.g. optim.lr=1e-3)")
    dotted, raw = text.split("=", 1)
    section, key = dotted.split(".", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (bool, int, float)) and holds_text(section, key):  # YAML reads Off as false, 001 as 1
        value = raw.strip()
    return section, key, value


def holds_text(section: str, key: str) -> bool:
    """Whether `section.key` is a known key whose value is text."""
    hints = typing.get_type_hints(_section_classes()[section]) if section in SECTIONS else {}
    annotation = hints.get(key)
    return annotation is str or str in typing.get_args(annotation)


class DuplicateKey(Exception):
    def __init__(self, key, lines: tuple[int, int]):
        super().__init__(key)
        self.key, self.lines = key, lines


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key written twice in one mapping is an error: it keeps the last,
    so a second `train:` section would silently drop the first one's settings."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be given again (PyYAML merges them)
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if not isinstance(key, typing.Hashable):  # refused by PyYAML itself, with its own message
                break
            if key in seen:
                raise DuplicateKey(key, (seen[key], line))
            seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path, *, what: str = "config file", error: type[HerbsError] = ConfigError,
              missing: str = "pass an existing YAML file (see configs/)", fix: str = "pass a YAML file (see configs/)") -> tuple[Any, Any]:
    """The document in a YAML file, and `as_written` of it, from one parse; or one sentence (an `error`) naming the
    `what` and why there is none. A key written twice in one mapping is refused (`UniqueKeyLoader`)."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} '{path}' is a directory; {fix}")
    if not path.is_file():
        raise error(f"{what} '{path}' does not exist; {missing}")
    try:
        loader = UniqueKeyLoader(path.read_text())
        try:  # yaml.load's steps, keeping the node for as_written
            node = loader.get_single_node()
            data = None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except UnicodeDecodeError:
        raise error(f"{what} '{path}' is not UTF-8 text; {fix}") from None
    except DuplicateKey as twice:
        raise error(f"{what} '{path}' has the key '{twice.key}' twice (lines {twice.lines[0]} and {twice.lines[1]}); keep one") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: {err.problem}" if mark is not None else err.__class__.__name__
        raise error(f"{what} '{path}' is not valid YAML ({where}); fix its syntax") from err
    return data, as_written(node)


def read_yaml_mapping(path: str | Path, hint: str = "pass an existing YAML file (see configs/)") -> tuple[dict, Any]:
    """The mapping stored in a YAML file and `as_written` of it, or one sentence saying why there is none."""
    data, written = read_yaml(path, missing=hint)
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys to values, not {type(data).__name__}")
    return data, written


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Read a YAML config (or start from the defaults), apply overrides, validate."""
    data, written = read_yaml_mapping(path) if path is not None else ({}, None)
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    _keep_text_as_written(data, written)
    for text in overrides:
        section, key, value = parse_override(text)
        if data.get(section) is None:  # absent, or `section:` with nothing under it
            data[section] = {}
        if isinstance(data[section], dict):  # anything else is refused by from_dict, naming it
            data[section][key] = value
    config = from_dict(data)
    if config.log.name is None and path is not None:
        path = Path(path)
        config.log.name = path.stem
    return config


def as_written(node: Optional[yaml.Node]) -> Any:
    """A YAML node's document with each unquoted scalar as the text written, and None for each quoted one: YAML reads
    `name: 001` as 1 and `wandb_mode: off` as false, where a key that holds text wants what was typed."""
    if isinstance(node, yaml.MappingNode):
        return {key.value: as_written(value) for key, value in node.value}
    if isinstance(node, yaml.SequenceNode):
        return [as_written(item) for item in node.value]
    return node.value if isinstance(node, yaml.ScalarNode) and node.style is None else None


def text_as_written(value: Any, written: Any, dotted: str) -> Any:
    """`value` of the key `section.key`, or the text it was written as where the key holds text (see `as_written`)."""
    if isinstance(value, (bool, int, float)) and isinstance(written, str) and holds_text(*dotted.split(".", 1)):
        return written
    return value


def _keep_text_as_written(data: dict, written: Any) -> None:
    """A key that holds text takes the unquoted value as written in the file (`written`, from `read_yaml`), as it
    does on the command line."""
    for section, values in data.items():
        raw = written.get(section) if isinstance(written, dict) else None
        for key, value in values.items() if isinstance(values, dict) and isinstance(raw, dict) and isinstance(section, str) else ():
            if isinstance(key, str):
                values[key] = text_as_written(value, raw.get(key), f"{section}.{key}")


def is_swin(backbone: str) -> bool:
    """Whether `model.backbone` is a timm Swin Transformer (V1), tapped as the original code taps it;
    its limits are known here, before anything is built. Other backbones say theirs when built."""
    return backbone.startswith("swin_")


def token_counts(config: ModelConfig) -> list[int]:
    """Tokens of each Swin tap for a square image: H/8, H/16, H/32, H/32 per side for patch 4."""
    side = config.img_size // config.backbone_args.get("patch_size", 4)
    return [(side // 2) ** 2, (side // 4) ** 2, (side // 8) ** 2, (side // 8) ** 2]


def check_selects(config: ModelConfig, tokens: list[int]) -> None:
    """Each tap keeps fewer tokens than it has: the rest are the background the loss suppresses."""
    for tap, n, count in zip(TAPS, config.num_selects, tokens):
        if n >= count:
            raise ConfigError(
                f"model.num_selects for {tap} is {n} but that tap of {config.backbone} has only {count} tokens at img_size "
                f"{config.img_size}; choose fewer than {count}"
            )


def check_ranges(config: Config) -> None:
    """Numbers outside what they mean: torch or numpy would stop the start with a traceback, or the run would
    train on without a word (a negative loss weight ascends, a probability of 5 is always)."""
    m, d, t, o, loss = config.model, config.data, config.train, config.optim, config.loss
    below_one, at_least_zero = "from 0 up to, not including, 1", "0 or more"
    checks = [("optim.momentum", o.momentum, 0 <= o.momentum < 1, below_one),
              ("optim.weight_decay", o.weight_decay, o.weight_decay >= 0, at_least_zero),
              ("optim.min_lr", o.min_lr, 0 <= o.min_lr <= o.lr, f"from 0 up to optim.lr ({o.lr:g})"),
              ("model.combiner_dropout", m.combiner_dropout, 0 <= m.combiner_dropout < 1, below_one),
              ("model.drop_path_rate", m.drop_path_rate, 0 <= m.drop_path_rate < 1, below_one),
              ("train.seed", t.seed, 0 <= t.seed < 2**32, f"from 0 to {2**32 - 1}"),
              ("model.img_size", m.img_size, m.img_size >= 1, "at least 1"),
              ("loss.temperature", loss.temperature, loss.temperature > 0, "above 0"),
              ("data.shuffle_buffer", d.shuffle_buffer, d.shuffle_buffer >= 1, "at least 1")]
    checks += [(f"loss.{key}", getattr(loss, key), getattr(loss, key) >= 0, at_least_zero)
               for key in ("lambda_b0", "lambda_b", "lambda_s", "lambda_n", "lambda_c")]
    for key, value, fine, wanted in checks:
        if not fine:
            raise ConfigError(f"{key} must be {wanted}, got {value}")
    for key, value in m.backbone_args.items():
        if value is None:  # timm drops None arguments: a typo such as {patch_size:0} would build the default model
            raise ConfigError(f"model.backbone_args has the key '{key}' without a value; write 'key: value' (a space after the colon)")
    patch = m.backbone_args.get("patch_size", 4)
    if not isinstance(patch, int) or isinstance(patch, bool) or patch < 1:
        raise ConfigError(f"model.backbone_args patch_size must be a whole number of at least 1, got {patch!r}")
    for key in ("depths", "num_heads") if is_swin(m.backbone) else ():
        value = m.backbone_args.get(key, [1] * 4)
        if not isinstance(value, list) or len(value) != 4 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in value):
            raise ConfigError(f"model.backbone_args {key} must be 4 whole numbers above 0 (one per Swin stage, which HERBS taps all of), "
                              f"got {value!r}")


def validate(config: Config) -> None:
    """Values that parse but cannot work: say which and why, before anything is built."""
    m, d, t, o, log = config.model, config.data, config.train, config.optim, config.log
    if m.head not in HEADS:
        raise ConfigError(f"model.head must be one of {', '.join(HEADS)}, got '{m.head}'")
    if m.head == "linear" and not config.loss.lambda_c:
        raise ConfigError("model.head linear is trained by the cross-entropy that loss.lambda_c weighs, and it is 0; set loss.lambda_c above 0")
    if m.num_classes < 2:
        raise ConfigError(f"model.num_classes must be at least 2, got {m.num_classes}")
    if m.fpn_size < 4:
        raise ConfigError(f"model.fpn_size must be at least 4 (the combiner uses fpn_size // 4), got {m.fpn_size}")
    if len(m.num_selects) != 4 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in m.num_selects):
        raise ConfigError(f"model.num_selects must be 4 positive integers (one per tap), got {m.num_selects}")
    if sum(m.num_selects) // 64 < 1:
        raise ConfigError(
            f"model.num_selects sums to {sum(m.num_selects)}, but the combiner needs at least 64 selected tokens "
            "(it pools them into sum // 64 graph nodes); raise num_selects"
        )
    check_ranges(config)
    if is_swin(m.backbone):
        stride = 8 * m.backbone_args.get("patch_size", 4)  # three patch mergings after the patch embedding
        if m.img_size % stride != 0:
            raise ConfigError(
                f"model.img_size {m.img_size} cannot go through the Swin pyramid: use a multiple of {stride} (e.g. 224 or 384)"
            )
        if m.head == "herbs":
            check_selects(m, token_counts(m))
    for key in ("mixup_alpha", "cutmix_alpha"):
        if getattr(d, key) < 0:
            raise ConfigError(f"data.{key} must be 0 (off) or more, got {getattr(d, key)}")
    for key in ("mixup_prob", "mixup_switch_prob", "blur_p", "sharpness_p"):
        if not 0 <= getattr(d, key) <= 1:
            raise ConfigError(f"data.{key} is a probability, from 0 to 1; got {getattr(d, key)}")
    if (d.mixup_alpha or d.cutmix_alpha) and d.batch_size < 2:
        raise ConfigError("data.mixup_alpha and data.cutmix_alpha mix the images of a micro-batch with each other, and data.batch_size 1 "
                          "has no other image; use data.batch_size 2 or more, or turn mixing off")
    if not 0 <= t.ema_decay < 1:
        raise ConfigError(f"train.ema_decay must be from 0 (off) up to, not including, 1 (e.g. 0.9998); got {t.ema_decay}")
    if t.select_best not in ("raw", "ema") or (t.select_best == "ema" and not t.ema_decay):
        raise ConfigError(f"train.select_best must be raw, or ema with train.ema_decay set; got {t.select_best}"
                          + (" with train.ema_decay 0" if t.select_best == "ema" else ""))
    if not 0 <= config.loss.label_smoothing < 1:
        raise ConfigError(f"loss.label_smoothing must be from 0 (off) up to, not including, 1; got {config.loss.label_smoothing}")
    if d.resize < m.img_size:
        raise ConfigError(f"data.resize ({d.resize}) must be at least model.img_size ({m.img_size}), the crop size")
    if d.batch_size < 1 or d.eval_batch_size < 1:
        raise ConfigError("data.batch_size and data.eval_batch_size must be at least 1")
    if d.max_image_pixels < 1:
        raise ConfigError(f"data.max_image_pixels must be at least 1, got {d.max_image_pixels}")
    if d.num_workers < 0:
        raise ConfigError(f"data.num_workers must be 0 or more, got {d.num_workers}")
    if d.worker_start not in WORKER_START_METHODS:
        raise ConfigError(f"data.worker_start must be one of {', '.join(WORKER_START_METHODS)}, got '{d.worker_start}'")
    if d.timeout <= 0:
        raise ConfigError(f"data.timeout must be above 0 seconds, got {d.timeout}")
    if d.retries < 0:
        raise ConfigError(f"data.retries must be 0 or more, got {d.retries}")
    def numbers(values: list) -> bool:
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)

    if len(d.mean) != 3 or len(d.std) != 3 or not numbers(d.mean + d.std) or not all(v > 0 for v in d.std):
        raise ConfigError(f"data.mean and data.std must be 3 numbers each (R, G, B; std above 0), got {d.mean} and {d.std}")
    if len(o.betas) != 2 or not numbers(o.betas) or not all(0 <= b < 1 for b in o.betas):
        raise ConfigError(f"optim.betas must be 2 numbers from 0 up to, not including, 1 (e.g. [0.9, 0.999]), got {o.betas}")
    if not any((config.loss.lambda_b0, config.loss.lambda_b, config.loss.lambda_s, config.loss.lambda_n, config.loss.lambda_c)):
        raise ConfigError("every loss weight (loss.lambda_*) is zero; set at least one above zero")
    if o.name not in ("sgd", "adamw"):
        raise ConfigError(f"optim.name must be 'sgd' or 'adamw', got '{o.name}'")
    if o.lr <= 0:
        raise ConfigError(f"optim.lr must be positive, got {o.lr}")
    if t.mixed_precision not in ("no", "bf16", "fp16"):
        raise ConfigError(f"train.mixed_precision must be no, bf16 or fp16, got '{t.mixed_precision}'")
    if t.gradient_accumulation_steps is None and t.global_batch_size is None:
        raise ConfigError("train.global_batch_size and train.gradient_accumulation_steps are both unset; set one of them")
    if t.gradient_accumulation_steps is not None and t.gradient_accumulation_steps < 1:
        raise ConfigError(f"train.gradient_accumulation_steps must be at least 1, got {t.gradient_accumulation_steps}")
    if t.global_batch_size is not None and t.global_batch_size < 1:
        raise ConfigError(f"train.global_batch_size must be at least 1, got {t.global_batch_size}")
    if o.lr_scaling not in LR_SCALING:
        raise ConfigError(f"optim.lr_scaling must be one of {', '.join(LR_SCALING)}, got '{o.lr_scaling}'")
    if o.warmup_epochs < 0:
        raise ConfigError(f"optim.warmup_epochs must be 0 or more, got {o.warmup_epochs}")
    if o.warmup_steps is not None and o.warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps must be 0 or more (or null: optim.warmup_epochs decides), got {o.warmup_steps}")
    if t.checkpoint_minutes is not None and t.checkpoint_minutes <= 0:
        raise ConfigError(f"train.checkpoint_minutes must be above 0 (or null for off), got {t.checkpoint_minutes}")
    if t.epochs < 1:
        raise ConfigError("train.epochs must be at least 1")
    if t.keep_checkpoints < 1:
        raise ConfigError("train.keep_checkpoints must be at least 1")
    if t.threads is not None and t.threads < 1:
        raise ConfigError(f"train.threads must be at least 1 or null (torch's default), got {t.threads}")
    for key, value in (("log.project", log.project), ("log.name", log.name)):  # the run directory's <project>/<name>
        if value is not None and (any(part in ("", ".", "..") for part in str(value).split("/")) or any(ord(c) < 32 for c in str(value))):
            raise ConfigError(f"{key} must be a relative path inside train.output_dir (names joined by '/', no '.' or '..', "
                              f"no control characters), got {value!r}")
    if log.wandb_mode not in ("auto", "online", "offline"):
        raise ConfigError(f"log.wandb_mode must be auto, online or offline, got '{log.wandb_mode}'")
    # Intervals and counts: 0 would divide by zero mid-run, a negative value silently never fires.
    for key, value, off in (("train.checkpoint_every", t.checkpoint_every, False), ("train.eval_every", t.eval_every, False),
                            ("train.max_steps", t.max_steps, True), ("train.max_nonfinite_steps", t.max_nonfinite_steps, False),
                            ("log.every", log.every, False), ("loss.temperature_halve_every", config.loss.temperature_halve_every, False)):
        if value is None and off:
            continue
        if value is None or value < 1:
            raise ConfigError(f"{key} must be a whole number of at least 1{' (or null: off)' if off else ''}, got {value}")
    if o.max_grad_norm is not None and o.max_grad_norm <= 0:
        raise ConfigError(f"optim.max_grad_norm must be positive (or null: no clipping), got {o.max_grad_norm}")
