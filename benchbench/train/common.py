"""What every training command shares: a fresh output folder, seeding, and the manifest."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchbench.run.environment import versions
from benchbench.errors import BenchError


def prepare_output(out: str | Path) -> Path:
    """Return ``out`` as a Path; refuse a folder that already holds files, so nothing is overwritten."""
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise BenchError(f"output {path} already exists and is not empty; choose another --out")
    return path


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG (dropout, init) and return a CPU generator for data order and noise."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def write_manifest(out: Path, *, kind: str, config: dict[str, Any], metrics: dict[str, Any],
                   seconds: float, device: str) -> dict[str, Any]:
    """Write ``manifest.json`` next to the weights: how they were made and what they reached."""
    manifest = {
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "training_config": config,
        "metrics": metrics,
        "train_seconds": round(seconds, 1),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def optimizer_step(loss: torch.Tensor, model: torch.nn.Module, opt: torch.optim.Optimizer,
                   sched: torch.optim.lr_scheduler.LRScheduler, ema: Any, clip: float = 1.0) -> None:
    """One update shared by every trainer: backward, clip the gradient norm, step, schedule, EMA."""
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    sched.step()
    ema.step(model.parameters())


def smoothed(running: float | None, value: float, keep: float = 0.98) -> float:
    """Exponentially smoothed loss for the progress bar and the manifest."""
    return value if running is None else keep * running + (1 - keep) * value


class LossLog:
    """The smoothed training loss a trainer shows on its progress bar and records in its manifest:
    ``running`` (the latest smoothed value) and ``history`` ([step, value rounded to ``digits``] every 100
    steps and at the last of ``steps``)."""

    def __init__(self, steps: int, digits: int = 6):
        self.steps, self.digits = steps, digits
        self.running: float | None = None
        self.history: list[list[float]] = []

    def add(self, step: int, loss: float, bar: Any) -> None:
        self.running = smoothed(self.running, loss)
        if step % 100 == 0 or step == self.steps - 1:
            self.history.append([step, round(self.running, self.digits)])
        bar.set_postfix(loss=f"{self.running:.4f}")


def ema_copy(model: torch.nn.Module, ema: Any) -> torch.nn.Module:
    """A CPU copy of ``model`` in eval mode holding the EMA weights (what the trainers save)."""
    final = copy.deepcopy(model).cpu().eval()
    ema.copy_to(final.parameters())
    return final
