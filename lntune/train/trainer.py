"""The one training loop for every method and stage, on one process or many (torchrun / accelerate launch).

Why a small loop over Accelerate rather than HF Trainer: checkpoints here hold only the trained
tensors (kilobytes for LayerNorm tuning instead of a 14 GB model copy per save), the loss is
normalised by the supervised tokens of the whole global batch (so N processes reproduce one process
exactly), and resuming replays the very same batches. Accelerate still provides device placement,
DDP and mixed precision; FSDP2 (lntune.train.distributed) and DeepSpeed ZeRO (lntune.train.zero) are applied
directly, so that every mode runs on CPU processes too (that is how they are tested).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import resource
import shutil
import sys
import time
from functools import partial
from pathlib import Path

import torch
import yaml

from lntune.adapter import fingerprint, merge_adapter, save_adapter
from lntune.config import RunConfig, config_to_dict
from lntune.data.dataset import SupervisedDataset, collate
from lntune.data.mixture import build_mixture
from lntune.errors import LntuneError
from lntune.files import read_yaml, write_text_atomic
from lntune.methods import apply_method
from lntune.model.load import check_model_dir, load_model, load_processor
from lntune.model.parts import unwrap
from lntune.train import zero
from lntune.train.checkpoint import checkpoint_dirs, load_checkpoint, save_checkpoint, select_checkpoint
from lntune.train.distributed import gather_trainable, gradient_sync, is_sharded, shard_with_fsdp2
from lntune.train.logger import MetricsLogger, norm_gradient_norms, truncate_jsonl
from lntune.train.loss import SupervisedLossHead  # [memory]
from lntune.train.optim import base_learning_rate, make_optimizer, make_scheduler
from lntune.train.sampler import StepBatchSampler, resolve_grad_accum


def _precision(name: str) -> str:
    if name == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[name]


def _memory_mb() -> float:
    """GPU: peak allocated since this run started. CPU: the process's resident memory now (sampled every step:
    the process-lifetime peak would carry over from earlier runs in the same process, e.g. lntune compare)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: lifetime peak, KiB


def _check_inputs(config: RunConfig, mixture) -> None:
    """Everything about the inputs that can be checked without loading them, before --out is touched: a mistake
    then costs nothing, and the corrected command starts in the same --out. (The data files were read already.)"""
    check_model_dir(config.model)
    folder = config.data.image_folder
    if folder is not None and not Path(folder).expanduser().is_dir():
        problem = "is not a folder" if Path(folder).expanduser().exists() else "does not exist"
        raise LntuneError(f"image folder {folder} {problem} (--image-folder)")
    with_images = len(mixture) - mixture.text_only()
    if with_images and folder is None:
        raise LntuneError(f"{with_images} of the selected samples have an image, but no image folder was given "
                          "(--image-folder)")
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise LntuneError(f"--out {out} is a file; give a directory for the run")


# What a start writes into a run directory before its first logged step. A directory holding only these, with the
# logs empty and no checkpoint, is an unstarted run (a start that failed before training got anywhere): a new
# start may clear it, and nothing else in a run directory is ever removed.
_START_FILES = ("config.yaml", "metrics.jsonl", "grad_stats.jsonl", "tensorboard", "checkpoints")


def _unstarted(out: Path) -> bool:
    names = {path.name for path in out.iterdir()}
    if "config.yaml" not in names or not names <= set(_START_FILES) or checkpoint_dirs(out):
        return False
    return all(not (out / name).is_file() or (out / name).stat().st_size == 0
               for name in ("metrics.jsonl", "grad_stats.jsonl"))


def _plan_run_dir(config: RunConfig, resume: bool) -> bool:
    """Start afresh (True) or continue (False), from the run directory as it is. Reads only: every process
    runs it before the main process writes anything."""
    out = Path(config.out)
    saved = out / "config.yaml"
    unstarted = out.is_dir() and _unstarted(out)
    if resume:
        if not saved.is_file():
            raise LntuneError(f"--resume: {out} is not a run directory (no config.yaml)")
        if unstarted:
            return True  # nothing was trained there: start afresh, with this command's configuration
        previous = read_yaml(saved, "it is the run's record; restore it, or start the run again in another --out")
        differing = sorted(key for key in _diff(previous, config_to_dict(config)) if key != "out")  # a run dir may be moved
        if differing:
            raise LntuneError(f"--resume: the configuration differs from {saved} at {', '.join(differing)}")
        return False  # continue: the checkpoint is chosen (and verified) by select_checkpoint
    if out.exists() and any(out.iterdir()) and not unstarted:
        raise LntuneError(f"run directory {out} already exists; pass --resume to continue it, or choose another --out")
    return True


def _start_run_dir(config: RunConfig, say) -> None:
    """Main process: the run directory, emptied of an unstarted run's files, with this run's config.yaml."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "config.yaml").exists():
        say(f"{out} holds a run that never logged a step; starting it afresh")
    for name in _START_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    write_text_atomic(out / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))


def _diff(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in set(a) | set(b):
            yield from _diff(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip(".")


def _next_batch(batches):
    """The next batch; an LntuneError from a DataLoader worker comes back wrapped in the worker's
    traceback, so keep only the original one-line message."""
    try:
        return next(batches)
    except LntuneError as error:
        message = str(error)
        if "Original Traceback" in message:
            message = message.strip().splitlines()[-1].removeprefix("lntune.errors.LntuneError: ")
            raise LntuneError(message) from None
        raise


def _token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross-entropy over supervised positions. logits [B, T, V], labels [B, T]."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
    )


def train(config: RunConfig, resume: bool = False, say=None) -> Path:
    """Run `config`; returns the run directory. Rank 0 writes all files."""
    try:
        return _train(config, resume, say)
    except BaseException:
        # A DeepSpeed run that failed anywhere after zero.initialize (resuming, training, saving) undoes its
        # process-wide changes, for later runs in this process (lntune compare, notebooks).
        zero.shutdown_all()
        raise


def _train(config: RunConfig, resume: bool, say) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    say = say or (lambda message: print(message, file=sys.stderr, flush=True))
    train_config, data_config = config.train, config.data
    # The effective accumulation, before any slow work; config.yaml keeps the settings as given, so a run set by
    # global_batch_size compares equal on resume whatever the process count.
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    grad_accum = resolve_grad_accum(train_config.batch_size, processes, train_config.global_batch_size,
                                    train_config.grad_accum)
    train_config = dataclasses.replace(train_config, grad_accum=grad_accum)
    mixture = build_mixture(data_config, train_config.seed)
    _check_inputs(config, mixture)
    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    sharded = multi_process and train_config.distributed == "fsdp2"
    # DeepSpeed even for one process (e.g. to try a zero3 run on one GPU first); FSDP2 only with several.
    zero_stage = zero.STAGES.get(train_config.distributed)
    if zero_stage:
        zero.require_deepspeed()  # before any work: clear errors if it is not installed or the config is wrong
        deepspeed_extra = zero.read_user_config(train_config.deepspeed_config)
    precision = _precision(train_config.precision)
    if (sharded or zero_stage) and precision == "fp16":
        raise LntuneError(f"fp16 with {train_config.distributed} has no loss scaling here; use precision bf16 (or "
                          f"fp32) with {train_config.distributed}")
    accelerator = Accelerator(
        # Accelerate only sets up multi-process CPU training (gloo) when told the run is on the CPU.
        cpu=multi_process and not torch.cuda.is_available(),
        # Under FSDP2 the shards' policy casts for compute, under DeepSpeed its bf16 mode; Accelerate's autocast stays off.
        mixed_precision="no" if sharded or zero_stage else precision,
    )
    is_main = accelerator.is_main_process
    log = say if is_main else (lambda message: None)
    fresh = _plan_run_dir(config, resume)
    accelerator.wait_for_everyone()  # every process has looked before the main process writes
    if fresh and is_main:
        _start_run_dir(config, log)
    accelerator.wait_for_everyone()
    run_dir = Path(config.out)
    # Before any work: the newest checkpoint that matches its manifest (an error if none of several does).
    resume_from = select_checkpoint(accelerator, run_dir, log) if resume and not fresh else None
    set_seed(train_config.seed)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    processor = load_processor(config.model)
    compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    model = load_model(config.model, dtype="bfloat16" if precision == "bf16" and not sharded else "float32",
                       # [memory] QLN / QLoRA: the blocks' frozen linear layers in 4 / 8 bits (lntune.model.quantize)
                       quantize=train_config.quantize, quantize_vision=train_config.quantize_vision)
    model = apply_method(model, config.method)
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()  # optimizer state and updates in fp32
    if train_config.gradient_checkpointing:
        # Non-reentrant checkpointing gives gradients to parameters inside blocks even when the blocks'
        # inputs need none (layernorm-simple freezes the embeddings).
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if sharded:
        model = shard_with_fsdp2(model, compute_dtype)

    dataset = SupervisedDataset(mixture, processor, model.config.image_seq_length, data_config, train_config.stage)
    world = accelerator.num_processes
    if world != processes:
        raise LntuneError(f"WORLD_SIZE is {processes} but {world} processes started; launch with torchrun or "
                          "accelerate launch, which set it")
    probe = StepBatchSampler(len(dataset), train_config.batch_size, train_config.grad_accum, world, 0, train_config.seed, 1)
    total_steps = train_config.max_steps or max(1, round(train_config.epochs * probe.steps_per_epoch))
    optimizer = make_optimizer(model, config)  # after sharding: FSDP2 replaces the parameters with DTensors
    scheduler = make_scheduler(optimizer, train_config.scheduler, total_steps, train_config.warmup_ratio)
    engine = None  # the DeepSpeed engine under zero2/zero3: it then steps the optimizer and the schedule
    if zero_stage:
        engine, optimizer, scheduler = zero.initialize(model, optimizer, scheduler, zero_stage, train_config, world,
                                                       precision, deepspeed_extra)
        model = engine
    start_step, counters = 0, {"skipped": 0, "truncated": 0}
    if resume_from is not None:
        state = load_checkpoint(accelerator, resume_from, model, optimizer, scheduler, sharded, engine)
        start_step, counters = state["step"], state["counters"]
        log(f"resuming from {resume_from} (step {start_step} of {total_steps})")
    if is_main:
        truncate_jsonl(run_dir / "metrics.jsonl", start_step, log)
        truncate_jsonl(run_dir / "grad_stats.jsonl", start_step, log)
    base_print = fingerprint(config.model)

    grouping = {}
    if train_config.group_by_modality_length:
        grouping = dict(zip(("has_image", "lengths"), mixture.modality_lengths()))
    sampler = StepBatchSampler(len(dataset), train_config.batch_size, train_config.grad_accum, world,
                               accelerator.process_index, train_config.seed, total_steps, start_step, **grouping)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=data_config.num_workers,
        # Several processes: one whose micro-batch has no image would skip the vision encoder and connector, and
        # its collectives (DDP's gradient buckets, FSDP2 / ZeRO gathers and reductions) would fall out of step with
        # the others'. The placeholder row keeps them in step (and spares DDP find_unused_parameters' extra graph
        # traversal in every step).
        collate_fn=partial(collate, pad_token_id=processor.tokenizer.pad_token_id,
                           placeholder=dataset.vision_placeholder() if world > 1 and mixture.text_only() else None),
        # Its own generator: creating the iterator must not draw from the global RNG that dropout uses,
        # or a resumed run (RNG restored, then a new iterator) would diverge from an uninterrupted one.
        generator=torch.Generator().manual_seed(train_config.seed),
    )
    if not sharded and engine is None:
        model, optimizer = accelerator.prepare(model, optimizer)
    # Without the DDP wrapper or DeepSpeed engine (still sharded under FSDP2 and ZeRO-3).
    plain_model = engine.module if engine is not None else accelerator.unwrap_model(model)
    # [memory] the output head computes the loss at supervised positions only, chunk by chunk (lntune.train.loss)
    loss_head = SupervisedLossHead.install(plain_model)
    model.train()
    unwrap(plain_model).model.vision_tower.eval()
    trainable = [p for p in model.parameters() if p.requires_grad]
    logger = MetricsLogger(run_dir, is_main)
    mode = " with FSDP2" if sharded else f" with DeepSpeed ZeRO-{zero_stage}" if zero_stage else ""
    log(
        f"training {config.method.name} ({sum(zero.numel(p) for p in trainable) * (world if sharded else 1):,} "
        f"trainable parameters) on {len(dataset):,} samples for {total_steps} steps of {sampler.global_batch} "
        f"samples, lr {base_learning_rate(config):g}, {world} process(es){mode}, precision {precision}, "
        f"images {dataset.aspect_ratio}"
        + (f"; {len(mixture.unusable_images):,} samples dropped before training (image outside the image folder "
           f"or missing)" if mixture.unusable_images else "")
    )
    log(f"global batch {sampler.global_batch} = batch_size {train_config.batch_size} x grad_accum {grad_accum} x "
        f"{world} process(es){' (grad_accum derived from global_batch_size)' if config.train.global_batch_size else ''}"
        f"; {'grouped by modality and length' if sampler.grouped else 'random order'}, "
        f"{sampler.steps_per_epoch} steps per epoch")

    from tqdm.auto import tqdm

    progress = tqdm(total=total_steps, initial=start_step, disable=not is_main, desc="train", unit="step", dynamic_ncols=True)
    batches = iter(loader)
    step = start_step
    try:
        while step < total_steps:
            started = time.perf_counter()
            micro_batches = [_next_batch(batches) for _ in range(train_config.grad_accum)]
            local_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro_batches)
            global_tokens = int(accelerator.reduce(torch.tensor(local_tokens, device=accelerator.device), "sum"))
            loss_total, seen_tokens = 0.0, 0
            for index, batch in enumerate(micro_batches):
                counters["skipped"] += len(batch.pop("skipped"))
                counters["truncated"] += batch.pop("truncated")
                labels = batch.pop("labels").to(accelerator.device)
                inputs = {key: value.to(accelerator.device) for key, value in batch.items()}
                seen_tokens += int(inputs["attention_mask"].sum())
                last = index == len(micro_batches) - 1
                if sharded:
                    sync = gradient_sync(model, enabled=last)
                elif engine is not None:
                    sync = contextlib.nullcontext()  # the engine accumulates and reduces by itself
                else:
                    sync = contextlib.nullcontext() if last else accelerator.no_sync(model)
                with sync, accelerator.autocast():
                    loss_head.set_labels(labels)  # [memory] read by the head inside this forward
                    loss_sum = model(**inputs, use_cache=False).logits.sum()  # [memory] `logits`: per-position losses [N]
                    # DDP averages gradients over processes; scaling by world makes the result the
                    # gradient of (sum of token losses / supervised tokens in the global batch).
                    loss = loss_sum * world / max(global_tokens, 1)
                if engine is not None:
                    # The engine divides the loss by the accumulation steps; this one is already normalised by
                    # the global batch's supervised tokens.
                    engine.backward(loss * train_config.grad_accum)
                    if not last:
                        engine.step()  # only counts the micro-step: the optimizer steps at the boundary
                else:
                    accelerator.backward(loss)
                loss_total += float(loss_sum.detach())
            step_lr = scheduler.get_last_lr()[0]  # the rate this step used (before the schedule advances)
            grad_norm = None
            if engine is not None:
                gradient_record = zero.norm_gradient_norms(engine) if train_config.grad_stats else {}
                engine.step()  # clips (gradient_clipping), steps the optimizer and the schedule, zeroes gradients
                if train_config.max_grad_norm > 0 and engine.get_global_grad_norm() is not None:
                    grad_norm = float(engine.get_global_grad_norm())
            else:
                if not sharded:
                    accelerator.unscale_gradients()  # fp16: statistics and clipping on the true gradients
                gradient_record = norm_gradient_norms(plain_model) if train_config.grad_stats else {}
                if train_config.max_grad_norm > 0:
                    # Gradients are already unscaled and synchronised (DDP) or sharded DTensors (FSDP2, whose
                    # norm is a DTensor too), so torch's clipping applies directly.
                    total_norm = torch.nn.utils.clip_grad_norm_(trainable, train_config.max_grad_norm)
                    grad_norm = float(total_norm.full_tensor() if is_sharded(total_norm) else total_norm)
                for parameter in trainable:
                    # A global batch without images (grouping by modality makes them common) leaves the connector
                    # without a gradient in one process, but with an exact zero from the vision placeholder row in
                    # several: give it that zero here too, so AdamW (momentum, weight decay, step count) moves it the
                    # same on any process count, as LLaVA's blank image for text-only samples does.
                    if parameter.grad is None:
                        parameter.grad = torch.zeros_like(parameter)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            step += 1
            progress.update(1)

            loss_value = float(accelerator.reduce(torch.tensor(loss_total, device=accelerator.device), "sum")) / max(global_tokens, 1)
            tokens = int(accelerator.reduce(torch.tensor(seen_tokens, device=accelerator.device), "sum"))
            elapsed = time.perf_counter() - started
            progress.set_postfix(loss=f"{loss_value:.4f}")
            if step % train_config.log_every == 0 or step == total_steps:
                logger.log({
                    "step": step, "epoch": step / sampler.steps_per_epoch, "loss": loss_value,
                    "lr": step_lr, "grad_norm": grad_norm, "tokens_per_second": tokens / elapsed,
                    "step_seconds": elapsed, "memory_mb": _memory_mb(), "supervised_tokens": global_tokens,
                    "skipped_total": counters["skipped"], "truncated_total": counters["truncated"],
                })
            if gradient_record:
                logger.log_gradients({"step": step, **gradient_record})
            if train_config.save_every and step % train_config.save_every == 0 and step < total_steps:
                save_checkpoint(accelerator, run_dir, step, plain_model, optimizer, scheduler,
                                {"counters": counters}, train_config.keep_checkpoints, sharded, engine)
    finally:
        loss_head.remove()  # [memory] a plain head again
        progress.close()
        logger.close()

    accelerator.wait_for_everyone()
    if engine is not None:
        tensors = zero.gather_trainable(engine)  # collective; the optimizer's fp32 weights
    else:
        tensors = gather_trainable(plain_model) if sharded or is_main else None  # collective under FSDP2
    if is_main:
        save_adapter(plain_model, run_dir / "adapter", config.model, config_to_dict(config.method),
                     train_config.stage, base_print, tensors=tensors, image_aspect_ratio=dataset.aspect_ratio,
                     # what evaluation should ask questions with; stage 1's `plain` drops the question, so not that
                     prompt=dataset.prompts.settings() if train_config.stage == "finetune" else None)
        save_merged = train_config.save_merged if train_config.save_merged is not None else train_config.stage == "pretrain"
        if save_merged:
            # From the adapter just written: the same path `lntune merge` takes, in the base model's dtype.
            merge_adapter(config.model, run_dir / "adapter", run_dir / "model", say=lambda message: None)
        summary = {"steps": total_steps, "samples_seen": total_steps * sampler.global_batch,
                   "global_batch_size": sampler.global_batch, "batch_size": train_config.batch_size,
                   "grad_accum": grad_accum, "processes": world, **counters,
                   "invalid_records_skipped": len(mixture.invalid()),
                   "unusable_images_skipped": len(mixture.unusable_images)}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log(f"done: {run_dir} (adapter/{' and model/' if save_merged else ''}); "
            f"{counters['skipped']} samples skipped, {counters['truncated']} truncated")
    accelerator.wait_for_everyone()
    # Release the DDP wrapper (and Accelerate's references to it) while every process is still alive: left for
    # interpreter teardown, its gloo resources could wait on a peer that has already exited (seen: a rare hang).
    accelerator.free_memory()
    if engine is not None:
        zero.shutdown(engine)
    del model, plain_model, optimizer, trainable, batches, loader, engine
    gc.collect()
    accelerator.wait_for_everyone()
    if multi_process:
        # Not with one process: then a process group is only the one lntune.train.zero keeps for later DeepSpeed
        # runs in this process, or the caller's own.
        accelerator.end_training()
    # Accelerate keeps its settings in a process-wide singleton; clear them so that a later train()
    # in the same process (lntune compare, notebooks) can choose another precision.
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    return run_dir
