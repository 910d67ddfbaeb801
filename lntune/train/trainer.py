"""The one training loop for every method and stage, on one process or many (torchrun / accelerate launch).

Why a small loop over Accelerate rather than HF Trainer: checkpoints here hold only the trained
tensors (kilobytes for LayerNorm tuning instead of a 14 GB model copy per save), the loss is
normalised by the supervised tokens of the whole global batch (so N processes reproduce one process
exactly), and resuming replays the very same batches. What differs between the distributed modes (the plain loop
or DDP through Accelerate, FSDP2, DeepSpeed ZeRO) is behind one backend object (lntune.train.backends), so this
file reads top to bottom: setup, loop, finish. Every mode runs on CPU processes too (that is how they are tested).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from lntune.adapter import fingerprint, merge_adapter, save_adapter
from lntune.config import RunConfig, TrainConfig, config_to_dict
from lntune.data.dataset import SupervisedDataset, collate
from lntune.data.mixture import build_mixture
from lntune.errors import LntuneError
from lntune.methods import apply_method
from lntune.model.load import load_model, load_processor
from lntune.model.parts import unwrap
from lntune.train.backends import Backend, create_backend
from lntune.train.checkpoint import load_checkpoint, save_checkpoint, select_checkpoint
from lntune.train.logger import MetricsLogger, truncate_jsonl
from lntune.train.loss import SupervisedLossHead
from lntune.train.optim import base_learning_rate, make_optimizer, make_scheduler
from lntune.train.run_dir import check_inputs, plan_run_dir, start_run_dir
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


def _say_on_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train(config: RunConfig, resume: bool = False, say=None) -> Path:
    """Run `config`; returns the run directory. Rank 0 writes all files."""
    say = say or _say_on_stderr
    # The effective accumulation, before any slow work; config.yaml keeps the settings as given, so a run set by
    # global_batch_size compares equal on resume whatever the process count.
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    train_config = config.train
    train_config = dataclasses.replace(train_config, grad_accum=resolve_grad_accum(
        train_config.batch_size, processes, train_config.global_batch_size, train_config.grad_accum))
    mixture = build_mixture(config.data, train_config.seed)
    check_inputs(config, mixture)
    backend = create_backend(train_config, _precision(train_config.precision), processes)  # checks its settings
    # Leaving the block undoes what the mode changed in the process (Accelerate's settings, DeepSpeed's patches of
    # torch), whether the run finished or failed anywhere: later runs in this process (lntune compare, notebooks)
    # compute as they would alone.
    with backend:
        run = _setup(config, train_config, mixture, backend, processes, resume, say)
        _loop(run, backend)
        _finish(run, backend)
    return run.run_dir


@dataclasses.dataclass
class _Run:
    """What setup prepared for the loop and finish (the model, optimizer and schedule are the backend's)."""

    config: RunConfig
    train: TrainConfig  # with the effective grad_accum
    mixture: object
    dataset: SupervisedDataset
    sampler: StepBatchSampler
    loader: torch.utils.data.DataLoader
    run_dir: Path
    total_steps: int
    start_step: int
    counters: dict
    base_print: str
    log: Callable[[str], None]  # says on the main process, nothing elsewhere


def _setup(config: RunConfig, train_config: TrainConfig, mixture, backend: Backend, processes: int, resume: bool,
           say) -> _Run:
    from accelerate.utils import set_seed

    accelerator = backend.accelerator
    log = say if backend.is_main else (lambda message: None)
    fresh = plan_run_dir(config, resume)
    accelerator.wait_for_everyone()  # every process has looked before the main process writes
    if fresh and backend.is_main:
        start_run_dir(config, log)
    accelerator.wait_for_everyone()
    run_dir = Path(config.out)
    # Before any work: the newest checkpoint that matches its manifest (an error if none of several does).
    resume_from = select_checkpoint(accelerator, run_dir, log) if resume and not fresh else None
    set_seed(train_config.seed)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    processor = load_processor(config.model)
    model = _trainable_model(config, backend)
    dataset = SupervisedDataset(mixture, processor, model.config.image_seq_length, config.data, train_config.stage)
    world = backend.world
    if world != processes:
        raise LntuneError(f"WORLD_SIZE is {processes} but {world} processes started; launch with torchrun or "
                          "accelerate launch, which set it")
    probe = StepBatchSampler(len(dataset), train_config.batch_size, train_config.grad_accum, world, 0, train_config.seed, 1)
    total_steps = train_config.max_steps or max(1, round(train_config.epochs * probe.steps_per_epoch))
    optimizer = make_optimizer(model, config)  # after prepare_model: FSDP2 replaces the parameters with DTensors
    scheduler = make_scheduler(optimizer, train_config.scheduler, total_steps, train_config.warmup_ratio)
    backend.prepare(model, optimizer, scheduler)
    start_step, counters = 0, {"skipped": 0, "truncated": 0}
    if resume_from is not None:
        state = load_checkpoint(backend, resume_from)
        start_step, counters = state["step"], state["counters"]
        log(f"resuming from {resume_from} (step {start_step} of {total_steps})")
    if backend.is_main:
        truncate_jsonl(run_dir / "metrics.jsonl", start_step, log)
        truncate_jsonl(run_dir / "grad_stats.jsonl", start_step, log)

    grouping = {}
    if train_config.group_by_modality_length:
        grouping = dict(zip(("has_image", "lengths"), mixture.modality_lengths()))
    sampler = StepBatchSampler(len(dataset), train_config.batch_size, train_config.grad_accum, world,
                               accelerator.process_index, train_config.seed, total_steps, start_step, **grouping)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=config.data.num_workers,
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
    backend.model.train()
    unwrap(backend.module).model.vision_tower.eval()
    run = _Run(config, train_config, mixture, dataset, sampler, loader, run_dir, total_steps, start_step, counters,
               fingerprint(config.model), log)
    _log_start(run, backend)
    return run


def _trainable_model(config: RunConfig, backend: Backend):
    """The model with the method applied, trainable parameters in fp32, ready for the backend's optimizer."""
    # QLN / QLoRA: the blocks' frozen linear layers in 4 / 8 bits (lntune.model.quantize)
    model = load_model(config.model, dtype=backend.model_dtype(), quantize=config.train.quantize,
                       quantize_vision=config.train.quantize_vision)
    model = apply_method(model, config.method)
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()  # optimizer state and updates in fp32
    if config.train.gradient_checkpointing:
        # Non-reentrant checkpointing gives gradients to parameters inside blocks even when the blocks'
        # inputs need none (layernorm-simple freezes the embeddings).
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return backend.prepare_model(model)


def _log_start(run: _Run, backend: Backend) -> None:
    config, train_config, sampler, mixture, world = run.config, run.train, run.sampler, run.mixture, backend.world
    run.log(
        f"training {config.method.name} ({backend.trainable_numel():,} "
        f"trainable parameters) on {len(run.dataset):,} samples for {run.total_steps} steps of {sampler.global_batch} "
        f"samples, lr {base_learning_rate(config):g}, {world} process(es){backend.label}, precision {backend.precision}, "
        f"images {run.dataset.aspect_ratio}"
        + (f"; {len(mixture.unusable_images):,} samples dropped before training (image outside the image folder "
           f"or missing)" if mixture.unusable_images else "")
    )
    run.log(f"global batch {sampler.global_batch} = batch_size {train_config.batch_size} x grad_accum "
            f"{train_config.grad_accum} x {world} process(es)"
            f"{' (grad_accum derived from global_batch_size)' if config.train.global_batch_size else ''}"
            f"; {'grouped by modality and length' if sampler.grouped else 'random order'}, "
            f"{sampler.steps_per_epoch} steps per epoch")


def _loop(run: _Run, backend: Backend) -> None:
    from tqdm.auto import tqdm

    train_config = run.train
    logger = MetricsLogger(run.run_dir, backend.is_main)
    progress = tqdm(total=run.total_steps, initial=run.start_step, disable=not backend.is_main, desc="train",
                    unit="step", dynamic_ncols=True)
    batches = iter(run.loader)
    # The output head computes the loss at supervised positions only, chunk by chunk (lntune.train.loss): no
    # [B, T, vocab] logits. remove() below gives it its own forward back before the adapter is written.
    loss_head = SupervisedLossHead.install(backend.model)
    try:
        for step in range(run.start_step + 1, run.total_steps + 1):
            measured, gradient_record = _train_step(run, backend, batches, loss_head)
            progress.update(1)
            progress.set_postfix(loss=f"{measured['loss']:.4f}")
            if step % train_config.log_every == 0 or step == run.total_steps:
                logger.log({
                    "step": step, "epoch": step / run.sampler.steps_per_epoch, "loss": measured["loss"],
                    "lr": measured["lr"], "grad_norm": measured["grad_norm"],
                    "tokens_per_second": measured["tokens_per_second"], "step_seconds": measured["step_seconds"],
                    "memory_mb": _memory_mb(), "supervised_tokens": measured["supervised_tokens"],
                    "skipped_total": run.counters["skipped"], "truncated_total": run.counters["truncated"],
                })
            if gradient_record:
                logger.log_gradients({"step": step, **gradient_record})
            if train_config.save_every and step % train_config.save_every == 0 and step < run.total_steps:
                save_checkpoint(backend, run.run_dir, step, {"counters": run.counters}, train_config.keep_checkpoints)
    finally:
        loss_head.remove()  # a plain head again
        progress.close()
        logger.close()


def _train_step(run: _Run, backend: Backend, batches, loss_head: SupervisedLossHead) -> tuple[dict, dict]:
    """One optimizer step over one global batch: (what the metrics log records, the norm gradient norms)."""
    accelerator, world, counters = backend.accelerator, backend.world, run.counters

    def total(value):  # summed over processes (a collective)
        return accelerator.reduce(torch.tensor(value, device=accelerator.device), "sum")

    started = time.perf_counter()
    micro_batches = [_next_batch(batches) for _ in range(run.train.grad_accum)]
    global_tokens = int(total(sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro_batches)))
    loss_total, seen_tokens = 0.0, 0
    for index, batch in enumerate(micro_batches):
        counters["skipped"] += len(batch.pop("skipped"))
        counters["truncated"] += batch.pop("truncated")
        labels = batch.pop("labels").to(accelerator.device)
        inputs = {key: value.to(accelerator.device) for key, value in batch.items()}
        seen_tokens += int(inputs["attention_mask"].sum())
        last = index == len(micro_batches) - 1
        with backend.no_sync(last), accelerator.autocast():
            loss_head.set_labels(labels)  # read by the head inside this forward
            loss_sum = backend.model(**inputs, use_cache=False).logits.sum()  # `logits`: per-position losses [N]
            # Gradients are averaged over processes; scaling by world makes the result the gradient of
            # (sum of token losses / supervised tokens in the global batch).
            loss = loss_sum * world / max(global_tokens, 1)
        backend.backward(loss, last)
        loss_total += float(loss_sum.detach())
    step_lr = backend.scheduler.get_last_lr()[0]  # the rate this step used (before the schedule advances)
    grad_norm, gradient_record = backend.step(run.train.grad_stats)
    loss_value = float(total(loss_total)) / max(global_tokens, 1)
    tokens = int(total(seen_tokens))
    elapsed = time.perf_counter() - started
    return {"loss": loss_value, "lr": step_lr, "grad_norm": grad_norm, "tokens_per_second": tokens / elapsed,
            "step_seconds": elapsed, "supervised_tokens": global_tokens}, gradient_record


def _finish(run: _Run, backend: Backend) -> None:
    """The adapter (and merged model), summary.json and the closing line."""
    config, train_config, counters = run.config, run.train, run.counters
    backend.accelerator.wait_for_everyone()
    tensors = backend.gather_trainable()  # collective under FSDP2 and ZeRO
    if not backend.is_main:
        return
    run_dir = run.run_dir
    save_adapter(backend.module, run_dir / "adapter", config.model, config_to_dict(config.method),
                 train_config.stage, run.base_print, tensors=tensors, image_aspect_ratio=run.dataset.aspect_ratio,
                 # what evaluation should ask questions with; stage 1's `plain` drops the question, so not that
                 prompt=run.dataset.prompts.settings() if train_config.stage == "finetune" else None)
    save_merged = train_config.save_merged if train_config.save_merged is not None else train_config.stage == "pretrain"
    if save_merged:
        # From the adapter just written: the same path `lntune merge` takes, in the base model's dtype.
        merge_adapter(config.model, run_dir / "adapter", run_dir / "model", say=lambda message: None)
    summary = {"steps": run.total_steps, "samples_seen": run.total_steps * run.sampler.global_batch,
               "global_batch_size": run.sampler.global_batch, "batch_size": train_config.batch_size,
               "grad_accum": train_config.grad_accum, "processes": backend.world, **counters,
               "invalid_records_skipped": len(run.mixture.invalid()),
               "unusable_images_skipped": len(run.mixture.unusable_images)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    run.log(f"done: {run_dir} (adapter/{' and model/' if save_merged else ''}); "
            f"{counters['skipped']} samples skipped, {counters['truncated']} truncated")
