"""The HERBS training loop, top to bottom.

One function, `train`, run identically by `python train.py` (one process) and by every process
of `accelerate launch train.py` (DDP or DeepSpeed). Accelerate owns devices, wrapping, autocast
and gradient synchronisation; this loop owns data position, schedule, evaluation,
checkpoints, preemption and logging.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list, set_seed
from safetensors.torch import load_file

from herbs.config import Config
from herbs.data.manifest import load_manifest
from herbs.data.stream import eval_stream, train_stream
from herbs.data.transforms import normalize
from herbs.errors import HerbsError
from herbs.evaluate.metrics import topk_accuracy
from herbs.evaluate.predictions import gather, predict_batches
from herbs.loss import HERBSLoss, temperature_at
from herbs.model import HERBSModel
from herbs.model.checkpoint import WEIGHTS, save_model
from herbs.progress import Progress
from herbs.train.accel import build_accelerator
from herbs.train.checkpoints import CheckpointDir, TrainerState, resolve_resume
from herbs.train.optim import build_optimizer, lr_at, set_lr
from herbs.train.preemption import EXIT_REQUEUE, REQUEUE_MARKER, PreemptionWatch
from herbs.train.tracking import MetricsFile, start_wandb

log = logging.getLogger("herbs.train")


def run_directory(config: Config) -> Path:
    path = Path(config.train.output_dir) / config.log.project / (config.log.name or "run")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"  # one per process: ranks check at the same time
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise HerbsError(f"run directory '{path}' cannot be written ({err.strerror}); set train.output_dir to a writable place") from err
    return path


def apply_debug(config: Config) -> None:
    """Debug mode: one process, no loader workers, a few steps, anomaly detection, deterministic kernels."""
    config.train.debug = True
    config.data.num_workers = 0
    config.log.wandb = False
    if config.train.max_steps is None:
        config.train.max_steps = 4
    torch.autograd.set_detect_anomaly(True)
    torch.use_deterministic_algorithms(True, warn_only=True)


def train(config: Config, resume: str | None = None) -> int:
    """Train to the end (returns 0) or until preempted (checkpoint written, returns EXIT_REQUEUE)."""
    t, d = config.train, config.data
    if t.debug:
        apply_debug(config)
    run_dir = run_directory(config)
    accelerator = build_accelerator(config, run_dir, log_with="wandb" if config.log.wandb else None)
    is_main = accelerator.is_main_process
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file is noise
    if is_main:
        config.save(run_dir / "config.yaml")
        (run_dir / REQUEUE_MARKER).unlink(missing_ok=True)

    # Data: each rank streams its own part; the loaders are NOT passed to accelerator.prepare.
    manifest = checked_manifest(d.shards, d.verify_checksums, accelerator)
    if manifest.num_classes != config.model.num_classes:
        raise HerbsError(
            f"the shards in {d.shards} have {manifest.num_classes} classes but model.num_classes is "
            f"{config.model.num_classes}; set model.num_classes={manifest.num_classes}"
        )
    rank, world = accelerator.process_index, accelerator.num_processes
    accum = t.gradient_accumulation_steps
    train_data = train_stream(d, crop=config.model.img_size, rank=rank, world_size=world, seed=t.seed, round_to=accum)
    has_val = d.val_split in manifest.splits
    steps_per_epoch = len(train_data) // accum
    total_steps = t.epochs * steps_per_epoch if t.max_steps is None else min(t.max_steps, t.epochs * steps_per_epoch)
    mean, std = d.mean, d.std

    # Model, loss, optimizer: the same initial weights on every rank.
    set_seed(t.seed)
    model = HERBSModel(config.model)
    loss_fn = HERBSLoss(config.loss)
    optimizer = build_optimizer(model, config.optim)
    model, optimizer = accelerator.prepare(model, optimizer)
    if t.compile:
        model = torch.compile(model)

    checkpoints = CheckpointDir(run_dir / "checkpoints", keep=t.keep_checkpoints)
    state = TrainerState()
    start_from = resolve_resume(resume, checkpoints)
    metrics = MetricsFile(run_dir / "metrics.jsonl", enabled=is_main)
    if start_from is not None:
        state = checkpoints.load(accelerator, start_from)
        metrics.truncate_after(state.step)
        log.info("resumed from %s (step %d, epoch %d, batch %d)", start_from, state.step, state.epoch, state.batch)
    if config.log.wandb:
        start_wandb(accelerator, config, run_dir)

    def record(values: dict) -> None:
        metrics.write({"step": state.step, "epoch": state.epoch, **values})
        if config.log.wandb:
            accelerator.log(values, step=state.step)

    def evaluate(split: str) -> dict:
        stream = eval_stream(d, split, crop=config.model.img_size, rank=rank, world_size=world)
        preds = gather(predict_batches(model, stream, accelerator.device, mean, std), accelerator)
        return {f"{split}/{k}": v for k, v in topk_accuracy(preds).items()} | {f"{split}/samples": len(preds), f"{split}/skipped": preds.skipped}

    def export_best(score: float) -> None:
        weights = accelerator.get_state_dict(model)  # collective: gathers ZeRO-3 shards
        if is_main:
            save_model(weights, config, run_dir / "best", class_names=manifest.class_names,
                       val_ensemble_top1=score, step=state.step, epoch=state.epoch)

    log.info("%d processes, %d optimizer steps per epoch, %d steps in all, run directory %s", world, steps_per_epoch, total_steps, run_dir)
    bar = Progress(total_steps, "train", unit="step", initial=state.step, disable=not is_main)
    window = Window()
    group_finite, preempted, grad_norm = True, False, None
    with PreemptionWatch() as watch, bar:
        while state.step < total_steps and not preempted:
            model.train()
            epoch, temperature = state.epoch, temperature_at(config.loss, state.epoch)
            fetched = time.perf_counter()
            for batch in train_data.epoch(epoch, start_batch=state.batch):
                window.wait += time.perf_counter() - fetched
                images = normalize(batch["image"].to(accelerator.device, non_blocking=True), mean, std)
                labels = batch["label"].to(accelerator.device, non_blocking=True)
                with accelerator.accumulate(model):
                    loss, terms = loss_fn(model(images), labels, epoch)
                    finite = all_ranks_finite(loss, accelerator)  # all ranks skip a bad micro-batch together
                    group_finite &= finite
                    if finite:
                        accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        if group_finite:
                            if config.optim.max_grad_norm is not None:
                                grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.optim.max_grad_norm)
                            set_lr(optimizer, lr_at(state.step, total_steps, config.optim))
                            optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                window.add(loss if finite else None, terms, len(labels), int(batch["skipped"]))
                state.batch += 1
                if state.batch == len(train_data):  # epoch done; len is a multiple of accum, so this step syncs
                    state.epoch, state.batch = state.epoch + 1, 0
                if not accelerator.sync_gradients:
                    fetched = time.perf_counter()
                    continue

                # An optimizer step is done (or skipped, for a non-finite loss).
                state.step += 1
                bar.update(1)
                state.nonfinite_in_row = 0 if group_finite else state.nonfinite_in_row + 1
                if not group_finite:
                    state.nonfinite_total += 1
                    log.warning("step %d skipped: non-finite loss (%d in a row)", state.step, state.nonfinite_in_row)
                    if state.nonfinite_in_row >= t.max_nonfinite_steps:
                        raise HerbsError(
                            f"the loss was non-finite for {state.nonfinite_in_row} steps in a row (step {state.step}); "
                            "lower optim.lr, set optim.max_grad_norm, or use train.mixed_precision=bf16"
                        )
                group_finite = True
                if state.step % config.log.every == 0 or state.step == total_steps:
                    values = window.summary(accelerator)
                    state.skipped_samples += values.pop("skipped_now")
                    values.update(lr=lr_at(state.step - 1, total_steps, config.optim), temperature=temperature,
                                  skipped_samples=state.skipped_samples, nonfinite_steps=state.nonfinite_total)
                    if grad_norm is not None:
                        values["grad_norm"] = float(grad_norm)
                    record(values)
                    bar.report(loss=f"{values['loss']:.3f}", lr=f"{values['lr']:.2e}", img_s=f"{values['images_per_s']:.0f}")
                    window = Window()
                epoch_done = state.batch == 0
                finished = state.step >= total_steps
                if has_val and (finished or (epoch_done and state.epoch % t.eval_every == 0)):
                    values = evaluate(d.val_split)
                    record(values)
                    score = values.get(f"{d.val_split}/ensemble_top1", 0.0)
                    if is_main:
                        bar.write(f"epoch {epoch}: val ensemble top-1 {score:.2f}%")
                    if score > state.best_val:
                        state.best_val, state.best_step = score, state.step
                        export_best(score)
                preempted = watch.agreed(accelerator)
                if preempted or finished or state.step % t.checkpoint_every == 0:
                    checkpoints.save(accelerator, state)
                if preempted or finished or epoch_done:
                    break
                fetched = time.perf_counter()

        if preempted:
            if is_main:
                (run_dir / REQUEUE_MARKER).write_text(f"{state.step}\n")
                log.info("preempted: checkpoint at step %d written; exiting with %d to be requeued", state.step, EXIT_REQUEUE)
            accelerator.wait_for_everyone()  # exit together: the launcher kills the others once one rank exits
            accelerator.end_training()
            return EXIT_REQUEUE

    if not has_val:  # nothing to choose by: the final weights are the model
        export_best(state.best_val)
    if d.test_split in manifest.splits:
        weights = use_best_weights(accelerator, model, run_dir / "best")
        final = evaluate(d.test_split) | {f"{d.test_split}/weights": weights}
        record(final)
        if is_main:
            print(f"test ensemble top-1: {final.get(f'{d.test_split}/ensemble_top1', 0.0):.2f}% "
                  f"({final[f'{d.test_split}/samples']} images, {weights} weights, chance {100.0 / manifest.num_classes:.2f}%)")
    accelerator.end_training()
    return 0


def use_best_weights(accelerator, model, best_dir: Path) -> str:
    """Load the exported best-val weights into the model for the test evaluation; returns which
    weights the model holds. ZeRO-3 keeps its partitioned final weights (they cannot be loaded
    into by name) and says so."""
    plugin = accelerator.state.deepspeed_plugin
    if not (best_dir / WEIGHTS).is_file() or (plugin is not None and plugin.zero_stage == 3):
        return "final"
    accelerator.unwrap_model(model).load_state_dict(load_file(str(best_dir / WEIGHTS)))
    return "best"


def checked_manifest(shards: str, verify: bool, accelerator):
    """The manifest, with the shards' checksums verified once (by the main process) and any problem
    raised on every rank, so that no rank waits for one that stopped."""
    problem = None
    if verify and accelerator.is_main_process:
        try:
            load_manifest(shards, verify=True)
        except HerbsError as err:
            problem = str(err)
    if accelerator.num_processes > 1:
        problem = broadcast_object_list([problem])[0]
    if problem:
        raise HerbsError(problem)
    return load_manifest(shards)


def all_ranks_finite(loss: torch.Tensor, accelerator) -> bool:
    """Whether the loss is finite on every rank, so that all ranks skip a bad step together."""
    bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    return bool(bad.item() == 0)


class Window:
    """Sums over the micro-batches since the last logged step."""

    def __init__(self):
        self.loss, self.terms, self.micro, self.images, self.skipped, self.wait = 0.0, {}, 0, 0, 0, 0.0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor | None, terms: dict, images: int, skipped: int) -> None:
        self.micro += 1
        self.images += images
        self.skipped += skipped
        if loss is not None:
            self.loss += loss.item()
            for name, value in terms.items():
                self.terms[name] = self.terms.get(name, 0.0) + value.item()

    def summary(self, accelerator) -> dict:
        """Means per micro-batch (loss terms averaged over ranks), throughput summed over ranks."""
        names = sorted(self.terms)
        micro = max(self.micro, 1)
        local = torch.tensor([self.loss / micro, *[self.terms[n] / micro for n in names], float(self.skipped), float(self.images)],
                             dtype=torch.float64, device=accelerator.device)
        if accelerator.num_processes > 1:
            local = accelerator.reduce(local, reduction="sum")
            local[: 1 + len(names)] /= accelerator.num_processes
        elapsed = time.perf_counter() - self.start
        steps = max(self.micro / accelerator.gradient_accumulation_steps, 1)
        values = {"loss": local[0].item(), **{f"loss/{n}": local[1 + i].item() for i, n in enumerate(names)}}
        values.update(skipped_now=int(local[-2].item()), images_per_s=local[-1].item() / elapsed,
                      step_time_s=elapsed / steps, data_wait_fraction=self.wait / elapsed)
        return values
