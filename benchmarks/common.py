"""Shared helpers of the benchmark scripts: machine notes and the result JSON convention."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_result(name: str, forklens: float, peer: float, unit: str, details: dict) -> Path:
    """Write ``results/NAME.json``: both sides of one run and ``ratio = forklens / peer``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"forklens": forklens, "peer": peer, "unit": unit, "ratio": forklens / peer,
                                "details": details}, indent=2))
    print(f"wrote {path}")
    return path
