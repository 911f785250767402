"""The HERBS training loop, top to bottom.

One function, `train`, run identically by `python train.py` (one process) and by every process
of `accelerate launch train.py` (DDP or DeepSpeed). Accelerate owns devices, wrapping, autocast
and gradient synchronisation; this loop owns data position, schedule, evaluation,
checkpoints, preemption and logging.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list, set_seed
from safetensors.torch import load_file

from herbs.accel import build_accelerator, launched_processes
from herbs.config import Config, DataConfig, LossConfig
from herbs.data.fetch import FetchPolicy
from herbs.data.manifest import load_manifest
from herbs.data.stream import eval_stream, train_stream
from herbs.data.transforms import normalize
from herbs.errors import EXIT_USAGE, CheckpointError, HerbsError
from herbs.loss import HERBSLoss, temperature_at
from herbs.metrics import topk_accuracy
from herbs.model import build_model
from herbs.model.checkpoint import WEIGHTS, save_model
from herbs.predictions import gather, predict_batches
from herbs.progress import Progress
from herbs.run import BEST_MODEL, CHECKPOINTS_DIR, EMA_MODEL, EXIT_REQUEUE, METRICS_FILE, REQUEUE_MARKER, append_event, job_label, run_dir as run_dir_of, start_event
from herbs.train.batch import plan_batch, warmup_steps
from herbs.train.checkpoints import CheckpointDir, TrainerState, to_resume
from herbs.train.faults import Faults
from herbs.train.fit import progressing, requirements
from herbs.train.ema import WeightAverage
from herbs.train.host_memory import keep_freed_memory
from herbs.train.mixing import BatchMixer
from herbs.train.norm_stats import NormStatistics
from herbs.train.optim import Schedule, build_optimizer, set_lr
from herbs.train.preemption import PreemptionWatch
from herbs.train.diskspace import space_for_run
from herbs.train.rundir import claim_run_directory, set_aside_later
from herbs.train.throughput import peak_flops, train_flops_per_image
from herbs.train.tracking import MetricsFile, start_wandb

log = logging.getLogger("herbs.train")


def run_directory(config: Config) -> Path:
    path = run_dir_of(config)
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


@contextlib.contextmanager
def recorded_attempt(run_dir: Path, enabled: bool):
    """The attempt's start and end in the run's launch.jsonl, however it ends (`herbs status` reads them). An
    attempt stopped by SIGTERM (scancel, the hard time limit) or Ctrl-C was not asked to be requeued, as one
    stopped by SIGUSR1 (SLURM's warning before the time limit) or by another rank's signal is."""
    if enabled:
        start_event(run_dir, command=sys.argv)
    outcome = {"exit_code": 1}  # what Python exits with when an exception leaves train()
    try:
        yield outcome
    except HerbsError:
        outcome["exit_code"] = EXIT_USAGE
        raise
    finally:
        if enabled:
            code, stopped_by = outcome["exit_code"], outcome.get("stopped_by")
            append_event(run_dir, event="end", job=job_label(), exit_code=code, requeue=code == EXIT_REQUEUE and stopped_by in (None, signal.SIGUSR1),
                         **({"signal": signal.Signals(stopped_by).name} if stopped_by else {}))


def train(config: Config, resume: str | None = None, overwrite: bool = False, watch: PreemptionWatch | None = None) -> int:
    """Train to the end (returns 0) or until preempted (checkpoint written, returns EXIT_REQUEUE).

    `watch`: signal handlers the caller installed early (`herbs train` does, before loading torch)."""
    if config.train.debug:
        apply_debug(config)
    run_dir = run_directory(config)
    # Before the process group: a bad plan stops every rank at once. A resume keeps its checkpoint's
    # global batch and data lanes on any number of processes.
    written_path, written = to_resume(run_dir / CHECKPOINTS_DIR, resume) or (None, None)
    plan = plan_batch(config, launched_processes(), written, str(written_path))
    accum = plan.accumulation
    accelerator = build_accelerator(config, run_dir, log_with="wandb" if config.log.wandb else None,
                                    accumulation=accum, find_unused_parameters=leaves_parameters_unused(config.loss))
    is_main = accelerator.is_main_process
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file is noise
    if accelerator.device.type == "cpu" and keep_freed_memory():
        log.info("CPU run: malloc keeps freed memory for the next step's tensors (herbs.train.host_memory)")
    with space_for_run(run_dir):
        run = claim_run_directory(run_dir, config, accelerator, resume=resume, overwrite=overwrite)
        if is_main:
            (run_dir / REQUEUE_MARKER).unlink(missing_ok=True)
        with recorded_attempt(run_dir, is_main) as attempt, contextlib.nullcontext(watch) if watch else PreemptionWatch() as watch:
            attempt["exit_code"] = _train(config, run_dir, run, accelerator, plan, watch, resume, written)
            attempt["stopped_by"] = watch.received
            return attempt["exit_code"]


def _train(config: Config, run_dir: Path, run, accelerator, plan, watch: PreemptionWatch, resume: str | None,
           written: TrainerState | None) -> int:
    t, d = config.train, config.data
    accum = plan.accumulation
    is_main = accelerator.is_main_process

    # Data: each rank streams its own part; the loaders are NOT passed to accelerator.prepare.
    manifest = checked_manifest(d, accelerator)
    if manifest.num_classes != config.model.num_classes:
        raise HerbsError(
            f"the shards in {d.shards} have {manifest.num_classes} classes but model.num_classes is "
            f"{config.model.num_classes}; set model.num_classes={manifest.num_classes}"
        )
    rank, world = accelerator.process_index, accelerator.num_processes
    refuse_other_layout(accelerator, written, run_dir)
    lanes = written.lanes if written else None  # a resumed run keeps its lanes, so its samples keep their steps
    on_cuda = accelerator.device.type == "cuda"
    train_data = train_stream(d, crop=config.model.img_size, rank=rank, world_size=world, seed=t.seed, accumulation=accum,
                              lanes=lanes, pin_memory=on_cuda)
    has_val = d.val_split in manifest.splits
    steps_per_epoch = len(train_data) // accum
    total_steps = t.epochs * steps_per_epoch if t.max_steps is None else min(t.max_steps, t.epochs * steps_per_epoch)
    schedule = Schedule(plan.peak_lr, config.optim.min_lr, warmup_steps(config, steps_per_epoch), total_steps)
    derived = {**plan.as_dict(), "warmup_steps": schedule.warmup_steps, "steps_per_epoch": steps_per_epoch,
               "total_steps": total_steps}
    if is_main:
        config.save(run_dir / "config.yaml", derived=derived)
    mean, std = d.mean, d.std

    # Model, loss, optimizer: the same initial weights on every rank.
    set_seed(t.seed)
    model = build_model(config.model, load_pretrained=written is None)  # a resume takes every weight from its checkpoint
    requires = requirements(config, manifest, model)
    loss_fn = HERBSLoss(config.loss)
    mixer = BatchMixer.from_config(config)
    optimizer = build_optimizer(model, config.optim)
    faults = Faults.from_env(optimizer, rank)
    model, optimizer = accelerator.prepare(model, optimizer)
    zero3 = zero_stage(accelerator) == 3
    ema = WeightAverage(accelerator.unwrap_model(model), t.ema_decay) if t.ema_decay else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)  # saved and resumed with every checkpoint
    norm_stats = NormStatistics(accelerator.unwrap_model(model))
    peak = peak_flops(accelerator.device) if t.mixed_precision != "no" else None  # peaks are half-precision rates
    flops_per_image = train_flops_per_image(config.model) if peak else None
    if t.compile:
        model = torch.compile(model)

    checkpoints = CheckpointDir(run_dir / CHECKPOINTS_DIR, keep=t.keep_checkpoints, run_id=run.id, requires=requires)
    state, start_from = checkpoints.resume(accelerator, resume)
    if start_from is not None and is_main:
        set_aside_later(run, start_from, state.step)
    metrics = MetricsFile(run_dir / METRICS_FILE, enabled=is_main)
    if resume:
        metrics.truncate_after(state.step)
    if start_from is not None:
        log.info("resumed from %s (step %d, epoch %d, batch %d)", start_from, state.step, state.epoch, state.batch)
        if state.processes and state.processes != world:
            state.batch = state.batch // state.accumulation * accum  # the same optimizer step of the epoch
            accelerator.step = state.batch  # Accelerate's micro-batch count (restored as written) decides when a step syncs
            log.info("resumed at step %d on %d processes, written by %d; accumulation %d -> %d, global batch %d kept",
                     state.step, world, state.processes, state.accumulation, accum, plan.global_batch)
        if run.finished(state.step, total_steps):
            log.info("this run already finished at step %d; nothing to do (raise train.epochs or train.max_steps to train on)", state.step)
            accelerator.end_training()
            return 0
    state.processes, state.per_process_batch, state.accumulation = world, plan.per_process, accum
    state.global_batch, state.lanes, state.zero_stage = plan.global_batch, train_data.lanes, zero_stage(accelerator)
    if config.log.wandb:
        start_wandb(accelerator, config, run_dir)

    def record(values: dict) -> None:
        with checkpoints.guard_space(metrics.path):
            metrics.write({"step": state.step, "epoch": state.epoch, **values})
        if config.log.wandb:
            accelerator.log(values, step=state.step)

    eval_streams = {}  # one per split, kept with its loader workers for every evaluation of the run

    def evaluate(split: str) -> dict:
        if split not in eval_streams:
            eval_streams[split] = eval_stream(d, split, crop=config.model.img_size, rank=rank, world_size=world, pin_memory=on_cuda)
        stream = eval_streams[split]
        # ZeRO-3 gathers each layer's weights from all ranks in every forward, so all ranks make as many
        # forwards as the rank with the most batches (the others pad with forwards on a blank image)
        forwards = max_over_ranks(len(stream), accelerator) if zero3 else None
        preds = gather(predict_batches(model, stream, accelerator.device, mean, std, forwards=forwards, crop=config.model.img_size), accelerator)
        return {f"{split}/{k}": v for k, v in topk_accuracy(preds).items()} | {f"{split}/samples": len(preds), f"{split}/skipped": preds.skipped}

    def export_best(score: float) -> None:
        """best/ from the weights train.select_best names (saved inside the swap: the state dict's tensors are the model's own)."""
        with ema.applied() if t.select_best == "ema" else contextlib.nullcontext():
            weights = accelerator.get_state_dict(model)  # collective: gathers ZeRO-3 shards
            if is_main:
                with checkpoints.guard_space(run_dir / BEST_MODEL):
                    save_model(weights, config, run_dir / BEST_MODEL, class_names=manifest.class_names,
                               val_ensemble_top1=score, step=state.step, epoch=state.epoch)

    log.info("%d processes x batch %d x %d accumulated = global batch %d; peak lr %.3g, %d warmup steps; "
             "%d optimizer steps per epoch, %d steps in all; mixed precision %s; run directory %s",
             world, plan.per_process, accum, plan.global_batch, plan.peak_lr, schedule.warmup_steps,
             steps_per_epoch, total_steps, t.mixed_precision, run_dir)
    bar = Progress(total_steps, "train", unit="step", initial=state.step, disable=not is_main)
    window = Window(accelerator)
    preempted, grad_norm = False, None
    checkpointed_at = time.monotonic()
    with bar:
        while state.step < total_steps and not preempted:
            model.train()
            epoch, temperature = state.epoch, temperature_at(config.loss, state.epoch)
            fetched = time.perf_counter()
            first = True
            for batch in progressing(train_data.epoch(epoch, start_batch=state.batch), epoch, state.batch):
                if first:  # how long the epoch's first batch took: loader start-up, not steady state
                    record({"first_batch_s": time.perf_counter() - fetched})
                    first = False
                window.wait += time.perf_counter() - fetched
                faults.record_keys(epoch, state.step, batch["key"])
                images = normalize(batch["image"].to(accelerator.device, non_blocking=True), mean, std)
                labels = batch["label"].to(accelerator.device, non_blocking=True)
                images, targets = mixer(images, labels, batch["key"], epoch) if mixer.active else (images, labels)
                if state.batch % accum == 0:
                    norm_stats.snapshot()
                with accelerator.accumulate(model):
                    # Before the backward pass: under DeepSpeed the last one of a group takes the optimizer step.
                    set_lr(optimizer, schedule.lr_at(state.step))
                    loss, terms = loss_fn(model(images), targets, epoch)
                    loss = faults.apply(loss, state.step, state.batch % accum)
                    window.add(loss, terms, len(labels), int(batch["skipped"]))
                    # Every micro-batch goes backward, a non-finite one too, so that DDP's and DeepSpeed's
                    # collectives run alike on all ranks; the group's step is then skipped as a whole
                    # (DeepSpeed skips a step with non-finite gradients by itself, on every rank).
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        group_finite = window.group_finite()  # one all-reduce per optimizer step
                        if group_finite:
                            if config.optim.max_grad_norm is not None:
                                grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.optim.max_grad_norm)
                            optimizer.step()
                            if ema is not None:
                                ema.update()
                        else:
                            norm_stats.restore()
                        optimizer.zero_grad(set_to_none=True)
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
                            f"lower optim.lr{'' if config.optim.max_grad_norm else ', set optim.max_grad_norm'}, "
                            "or use train.mixed_precision=bf16"
                        )
                if state.step % config.log.every == 0 or state.step == total_steps:
                    values = window.summary()
                    state.skipped_samples += values.pop("skipped_now")
                    values.update(lr=schedule.lr_at(state.step - 1), temperature=temperature,
                                  skipped_samples=state.skipped_samples, nonfinite_steps=state.nonfinite_total)
                    if grad_norm is not None:
                        values["grad_norm"] = float(grad_norm)
                    if flops_per_image:
                        values["mfu"] = flops_per_image * values["images_per_s_per_process"] / peak
                    record(values)
                    bar.report(loss=f"{values['loss']:.3f}", lr=f"{values['lr']:.2e}", img_s=f"{values['images_per_s']:.0f}")
                    window = Window(accelerator)
                epoch_done = state.batch == 0
                finished = state.step >= total_steps
                if has_val and (finished or (epoch_done and state.epoch % t.eval_every == 0)):
                    values = evaluate(d.val_split)
                    score = values.get(f"{d.val_split}/ensemble_top1", 0.0)
                    said = f"epoch {epoch}: val ensemble top-1 {score:.2f}%"
                    if ema is not None:
                        with ema.applied():
                            averaged = evaluate(d.val_split)
                        values |= {key.replace(f"{d.val_split}/", f"{d.val_split}_ema/", 1): v for key, v in averaged.items()}
                        said += f", EMA weights {averaged.get(f'{d.val_split}/ensemble_top1', 0.0):.2f}%"
                        if t.select_best == "ema":
                            score = averaged.get(f"{d.val_split}/ensemble_top1", 0.0)
                    record(values)
                    if is_main:
                        bar.write(said)
                    if score > state.best_val:
                        state.best_val, state.best_step = score, state.step
                        export_best(score)
                clock_due = t.checkpoint_minutes is not None and time.monotonic() - checkpointed_at >= 60 * t.checkpoint_minutes
                preempted, clock_due = any_rank(accelerator, watch.received is not None, clock_due)  # ranks decide together
                if preempted or finished or clock_due or state.step % t.checkpoint_every == 0:
                    state.skipped_samples += window.take_skipped()  # a resume does not see these batches again
                    checkpoints.save(accelerator, state)
                    checkpointed_at = time.monotonic()
                if preempted or finished or epoch_done:
                    break
                fetched = time.perf_counter()

        train_data.close()  # its workers are done; the evaluation streams keep theirs to the end
        if preempted:
            if is_main:
                (run_dir / REQUEUE_MARKER).write_text(f"{state.step}\n")
                log.info("preempted: checkpoint at step %d written; exiting with %d to be requeued", state.step, EXIT_REQUEUE)
            accelerator.wait_for_everyone()  # exit together: the launcher kills the others once one rank exits
            accelerator.end_training()
            return EXIT_REQUEUE

    # A stop asked for from here on does not stop the run: its last checkpoint is written, and what is left is quick.
    watch.doing = "training is done and its last checkpoint written; finishing the final export and test evaluation"
    if not has_val:  # nothing to choose by: the final weights are the model
        export_best(state.best_val)
    if ema is not None:  # the final averaged weights, whichever best/ holds
        with ema.applied():  # saved inside: the state dict's tensors are the model's own
            weights = accelerator.get_state_dict(model)
            if is_main:
                save_model(weights, config, run_dir / EMA_MODEL, class_names=manifest.class_names, step=state.step, epoch=state.epoch)
    if d.test_split in manifest.splits:
        weights = use_best_weights(accelerator, model, run_dir / BEST_MODEL)
        final = evaluate(d.test_split) | {f"{d.test_split}/weights": weights}
        record(final)
        if is_main:
            print(f"test ensemble top-1: {final.get(f'{d.test_split}/ensemble_top1', 0.0):.2f}% "
                  f"({final[f'{d.test_split}/samples']} images, {weights} weights, chance {100.0 / manifest.num_classes:.2f}%)")
    run.finish(state.step, is_main)
    accelerator.end_training()
    return 0


def use_best_weights(accelerator, model, best_dir: Path) -> str:
    """Load the exported best-val weights into the model for the test evaluation; returns which
    weights the model holds. ZeRO-3 keeps its partitioned final weights (they cannot be loaded
    into by name) and says so."""
    if not (best_dir / WEIGHTS).is_file() or zero_stage(accelerator) == 3:
        return "final"
    accelerator.unwrap_model(model).load_state_dict(load_file(str(best_dir / WEIGHTS)))
    return "best"


def refuse_other_layout(accelerator, written: TrainerState | None, run_dir: Path) -> None:
    """A DeepSpeed checkpoint does not load as Accelerate's own layout nor the other way round (on
    another process count ZeRO's partitions are re-cut: `zero_resize.py`); say so before any rank
    loads, with what works."""
    if not written or not written.processes:
        return
    stage = zero_stage(accelerator)
    was = f"DeepSpeed ZeRO-{written.zero_stage}" if written.zero_stage else "non-DeepSpeed"
    if written.zero_stage != stage:
        now = f"DeepSpeed ZeRO-{stage}" if stage else "no DeepSpeed"
        fix = f"launch it with the ZeRO-{written.zero_stage} config" if written.zero_stage else "launch it without DeepSpeed"
        raise CheckpointError(f"the checkpoints in {run_dir / CHECKPOINTS_DIR} were written by {was} processes and this run "
                              f"uses {now}; resume with the same kind of launch ({fix})")


def zero_stage(accelerator) -> int:
    plugin = accelerator.state.deepspeed_plugin
    return 0 if plugin is None else plugin.zero_stage


def checked_manifest(data: DataConfig, accelerator):
    """The manifest, with local shards' checksums verified once (by the main process; remote shards are
    verified as they are fetched) and any problem raised on every rank, so that no rank waits for one that stopped."""
    problem, fetch = None, FetchPolicy.from_config(data)
    if data.verify_checksums and accelerator.is_main_process:
        try:
            load_manifest(data.shards, verify=True, fetch=fetch)
        except HerbsError as err:
            problem = str(err)
    if accelerator.num_processes > 1:
        problem = broadcast_object_list([problem])[0]
    if problem:
        raise HerbsError(problem)
    return load_manifest(data.shards, fetch=fetch)


def leaves_parameters_unused(loss: LossConfig) -> bool:
    """Whether a zero loss weight leaves a head without gradient (the pyramid's classifiers without
    refinement, the combiner without its cross-entropy, ...), which DDP must be told about."""
    return any(weight == 0 for weight in (loss.lambda_b0, loss.lambda_b, loss.lambda_n, loss.lambda_c))


def any_rank(accelerator, *flags: bool) -> list[bool]:
    """Each flag, true on every rank when it is true on any (a collective: call it on all ranks)."""
    values = torch.tensor([float(f) for f in flags], device=accelerator.device)
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values, reduction="sum")
    return [bool(v > 0) for v in values.tolist()]


def max_over_ranks(value: int, accelerator) -> int:
    if accelerator.num_processes == 1:
        return value
    return int(accelerator.reduce(torch.tensor([value], device=accelerator.device), reduction="max").item())


class Window:
    """Sums over the micro-batches since the last logged step. Losses stay on the device and are
    read once per logged step; the only per-step synchronisation is the group's finiteness."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.names: list[str] = []
        self.sums = None  # [loss, *terms] summed over finite micro-batches
        self.finite = torch.zeros((), device=accelerator.device)  # finite micro-batches summed
        self.group_bad = torch.zeros((), device=accelerator.device)  # non-finite micro-batches of this group
        self.micro, self.images, self.skipped, self.wait = 0, 0, 0, 0.0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, terms: dict, images: int, skipped: int) -> None:
        values = torch.stack([loss.detach(), *(v.detach() for v in terms.values())]).float()
        finite = torch.isfinite(values).all()
        if self.sums is None:
            self.names, self.sums = list(terms), torch.zeros_like(values)
        self.sums += torch.where(finite, values, 0.0)
        self.finite += finite
        self.group_bad += ~finite
        self.micro += 1
        self.images += images
        self.skipped += skipped

    def group_finite(self) -> bool:
        """Whether every micro-batch since the last call was finite on every rank: the count of bad ones is
        summed over ranks where it is, on the device, so the step waits for the device once."""
        bad = self.group_bad
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        bad = bad.item()
        self.group_bad.zero_()
        return not bad

    def take_skipped(self) -> int:
        """The samples skipped since the last logged step, summed over ranks; counted by the caller from now on."""
        skipped = torch.tensor([float(self.skipped)], dtype=torch.float64, device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            skipped = self.accelerator.reduce(skipped, reduction="sum")
        self.skipped = 0
        return int(skipped.item())

    def summary(self) -> dict:
        """Means per finite micro-batch (loss terms averaged over ranks), throughput summed over ranks."""
        accelerator, world = self.accelerator, self.accelerator.num_processes
        sums = self.sums if self.sums is not None else torch.zeros(1, device=accelerator.device)
        local = torch.cat([sums.double() / self.finite.clamp(min=1).double(),
                           torch.tensor([float(self.skipped), float(self.images)], dtype=torch.float64, device=accelerator.device)])
        if world > 1:
            local = accelerator.reduce(local, reduction="sum")
            local[:-2] /= world
        elapsed = time.perf_counter() - self.start
        steps = max(self.micro / accelerator.gradient_accumulation_steps, 1)
        values = {"loss": local[0].item(), **{f"loss/{n}": local[1 + i].item() for i, n in enumerate(self.names)}}
        images_per_s = local[-1].item() / elapsed
        values.update(skipped_now=int(local[-2].item()), images_per_s=images_per_s, images_per_s_per_process=images_per_s / world,
                      step_time_s=elapsed / steps, data_wait_fraction=self.wait / elapsed)
        return values
