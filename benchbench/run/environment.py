"""What a result was computed with: package versions and the machine, recorded in run configs and model
manifests. It imports nothing else of benchbench, so the runner, quality and training all can."""

from __future__ import annotations

import platform
import time
from typing import Any

import torch


def versions() -> dict[str, str]:
    """Versions of what decides the numbers: Python, torch, diffusers, numpy, scikit-learn, benchbench."""
    import diffusers
    import numpy
    import sklearn

    import benchbench

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
        "benchbench": benchbench.__version__,
    }


def device_name(device: torch.device) -> str:
    """The accelerator's marketing name (``NVIDIA H100 80GB HBM3``), or ``cpu``."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def now() -> str:
    """UTC time stamp, ISO 8601 to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def environment(device: torch.device, **extra: Any) -> dict[str, Any]:
    """The informational part of a run config: device, threads, versions, time, plus ``extra`` fields."""
    return {
        **extra,
        "device": str(device),
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
        "created": now(),
    }
