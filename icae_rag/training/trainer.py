"""The training loop: accelerate for devices/processes, exact resume, progress, JSONL metrics.

Read it top to bottom: set up (model, samples, optimizer, resume state), then for each step:
set the learning rate, run `grad_accum` micro-batches, clip, step, log, maybe evaluate, maybe
checkpoint. A checkpoint holds the trained tensors, the optimizer state, the RNG state and the
step; the data order is a pure function of (seed, step), so resuming replays exactly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import shutil
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..compressors import load_compressor, new_compressor
from ..compressors.base import compressor_config_from_dict, get_compressor_class, package_versions
from ..errors import CheckpointError, ConfigError
from ..io import read_json, read_tensors, write_json, write_tensors
from ..models.runtime import resolve_device
from .config import TrainConfig
from .objectives import ObjectiveModule
from .samples import Sample, build_samples

logger = logging.getLogger(__name__)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate at `step`: linear warm-up, then cosine/linear decay to 10% (or constant)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.lr * (0.1 + 0.9 * decay)


class DataOrder:
    """Which training samples form micro-batch (step, micro) on process `rank`: a seeded
    permutation per epoch, so the order depends only on (seed, position) and resumes exactly."""

    def __init__(self, n: int, cfg: TrainConfig, world: int) -> None:
        self.n, self.cfg, self.world = n, cfg, world
        self._perms: dict[int, list[int]] = {}

    def _at(self, k: int) -> int:
        epoch, pos = divmod(k, self.n)
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g).tolist()}
        return self._perms[epoch][pos]

    def batch(self, step: int, micro: int, rank: int) -> list[int]:
        """Sample indices of one micro-batch."""
        cfg = self.cfg
        base = ((step * cfg.grad_accum + micro) * self.world + rank) * cfg.micro_batch
        return [self._at(base + i) for i in range(cfg.micro_batch)]


def _build_compressor(cfg: TrainConfig, device: str):
    if cfg.init_from:
        compressor = load_compressor(cfg.init_from, device=device, dtype="fp32")
        if compressor.kind != cfg.compressor:
            raise ConfigError(f"init_from {cfg.init_from} is a {compressor.kind} checkpoint, config says {cfg.compressor}")
        if cfg.compressor_config:
            logger.warning("compressor_config is ignored when init_from is set (the checkpoint's config is used)")
        return compressor
    config_cls, _ = get_compressor_class(cfg.compressor)
    config = compressor_config_from_dict(config_cls, cfg.compressor_config, strict=True)
    return new_compressor(cfg.compressor, config, device=device, dtype="fp32")


class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop checkpoints and stops after the current step."""

    def __init__(self) -> None:
        self.stop = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.stop = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _save_resume_state(path: Path, compressor, optimizer, state: dict[str, Any]) -> None:
    """Write the resume checkpoint into a temp dir, then swap it in (never half-written)."""
    tmp = path.parent / f".{path.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    compressor.save_pretrained(tmp / "compressor")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    write_tensors(tmp / "rng.safetensors", {"torch": torch.get_rng_state()})
    write_json(tmp / "state.json", state)
    old = path.parent / f".{path.name}.old"
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _load_resume_state(path: Path, compressor, optimizer, cfg: TrainConfig) -> dict[str, Any]:
    if not (path / "state.json").is_file():
        raise CheckpointError(f"{path} has no state.json: pass the run's output directory or its 'checkpoint' dir")
    state = read_json(path / "state.json")
    saved = dict(state["config"])
    now = cfg.to_dict()
    changed = sorted(k for k in now if k not in ("steps", "output_dir") and now[k] != saved.get(k))
    if changed:
        raise ConfigError(f"cannot resume {path}: the config changed in {changed}; only 'steps' may change")
    tensors, _ = read_tensors(path / "compressor" / "compressor_model.safetensors")
    compressor.load_trainable_state_dict(tensors)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    torch.set_rng_state(read_tensors(path / "rng.safetensors")[0]["torch"])
    return state


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """On resume, drop log lines past the checkpoint so replayed steps are not logged twice."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


@torch.no_grad()
def evaluate(module: ObjectiveModule, samples: list[Sample], cfg: TrainConfig) -> dict[str, float] | None:
    """Validation loss over the first `eval_batches` micro-batches (fixed, never trained on), with
    the memory and without it (an empty context): their gap is what the decoder reads from memory."""
    if not samples:
        return None
    was_training = module.training
    module.eval()
    starts = range(0, min(len(samples), cfg.eval_batches * cfg.micro_batch), cfg.micro_batch)
    with_memory = [float(module(samples[i : i + cfg.micro_batch])) for i in starts]
    without = [float(module(samples[i : i + cfg.micro_batch], use_memory=False)) for i in starts]
    module.train(was_training)
    return {"val_loss": sum(with_memory) / len(with_memory), "val_loss_no_memory": sum(without) / len(without)}


def train(cfg: TrainConfig, *, resume: str | os.PathLike | None = None, max_minutes: float | None = None,
          stop_after_steps: int | None = None, progress: bool = True) -> Path:
    """Run or resume training; returns the final checkpoint dir (or the resume dir if stopped early).

    `max_minutes` / `stop_after_steps` checkpoint and stop this sitting early (resume later).
    """
    from accelerate import Accelerator

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # cpu=True on a machine without an accelerator lets several launched processes train
    # together over gloo (accelerate only picks MULTI_CPU when told the run is on CPU).
    acc = Accelerator(mixed_precision="bf16" if cfg.precision == "bf16" else "no",
                      cpu=resolve_device("auto").type == "cpu")
    out = Path(cfg.output_dir)
    ckpt_dir, log_path = out / "checkpoint", out / "metrics.jsonl"
    torch.manual_seed(cfg.seed)

    # --- set-up: model, samples (fixed split), optimizer, resume state ----------------------
    compressor = _build_compressor(cfg, str(acc.device))
    samples = build_samples(cfg, compressor.decoder.tokenizer)
    module = ObjectiveModule(compressor, cfg.max_answer_tokens)
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, elapsed, tokens_seen = 0, 0.0, 0
    if resume is not None:
        path = Path(resume)
        path = path / "checkpoint" if (path / "checkpoint").is_dir() else path
        state = _load_resume_state(path, compressor, optimizer, cfg)
        step, elapsed, tokens_seen = state["step"], state["elapsed_seconds"], state["tokens_seen"]
    ddp_module, optimizer = acc.prepare(module, optimizer)
    order = DataOrder(len(samples.train), cfg, acc.num_processes)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "run.json", {"config": cfg.to_dict(), "data": samples.record, "versions": package_versions(),
                                      "processes": acc.num_processes, "device": str(acc.device)})
        _truncate_log(log_path, step)

    def save(at_step: int) -> None:
        acc.wait_for_everyone()
        if acc.is_main_process:
            _save_resume_state(ckpt_dir, compressor, optimizer, {
                "step": at_step, "elapsed_seconds": elapsed, "tokens_seen": tokens_seen, "config": cfg.to_dict()})

    # --- the loop ---------------------------------------------------------------------------
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.compressor}/{cfg.stage}",
               disable=not (progress and acc.is_main_process), unit="step")
    started, first_step = time.perf_counter(), step
    stopped_early = False
    with _StopFlag() as flag:
        while step < cfg.steps:
            t0 = time.perf_counter()
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum, step_tokens = 0.0, 0
            for micro in range(cfg.grad_accum):
                batch = [samples.train[i] for i in order.batch(step, micro, acc.process_index)]
                sync = nullcontext() if micro == cfg.grad_accum - 1 else acc.no_sync(ddp_module)
                with sync, acc.autocast():
                    loss = ddp_module(batch)
                    acc.backward(loss / cfg.grad_accum)
                loss_sum += float(loss.detach())
                step_tokens += module.last_tokens
            grad_norm = acc.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            mean_loss = float(acc.reduce(torch.tensor(loss_sum / cfg.grad_accum, device=acc.device), "mean"))
            dt = time.perf_counter() - t0
            elapsed += dt
            tokens_seen += step_tokens * acc.num_processes
            record = {"step": step, "loss": round(mean_loss, 5), "lr": lr, "grad_norm": round(float(grad_norm), 4),
                      "seconds": round(dt, 3), "tokens_per_s": round(step_tokens * acc.num_processes / dt, 1)}
            if cfg.eval_every and step % cfg.eval_every == 0:
                record |= evaluate(module, samples.val, cfg) or {}
            if acc.is_main_process and (step % cfg.log_every == 0 or "val_loss" in record):
                _append_jsonl(log_path, record)
            bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=record["tokens_per_s"])
            bar.update(1)
            out_of_time = (max_minutes is not None and time.perf_counter() - started > 60 * max_minutes) or (
                stop_after_steps is not None and step - first_step >= stop_after_steps)
            if step % cfg.save_every == 0 or flag.stop or out_of_time:
                save(step)
            if (flag.stop or out_of_time) and step < cfg.steps:
                stopped_early = True
                break
    bar.close()
    if stopped_early:
        logger.warning("stopped at step %d/%d; resume with --resume %s", step, cfg.steps, out)
        return ckpt_dir

    # --- final: evaluate, record, save the small trained checkpoint --------------------------
    val = evaluate(module, samples.val, cfg) or {}
    save(step)
    final = out / "final"
    if acc.is_main_process:
        compressor.trained = True
        compressor.training_info = {
            "stage": cfg.stage, "steps": step, "wall_seconds": round(elapsed, 1),
            "tokens_per_second": round(tokens_seen / max(elapsed, 1e-9), 1),
            "peak_rss_mb": round(_peak_rss_mb(), 1), **val, "processes": acc.num_processes,
            "config": cfg.to_dict(), "data": samples.record,
            "previous": dict(compressor.training_info) if cfg.init_from else {},
        }
        compressor.save_pretrained(final)
        _append_jsonl(log_path, {"step": step, "final": True, **val})
    acc.wait_for_everyone()
    return final
