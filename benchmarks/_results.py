"""What every benchmark's results file names: where it goes, the device and the library versions."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import re
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PACKAGES = ("iopo-fast", "torch", "triton", "transformers", "flash-attn", "liger-kernel", "cut-cross-entropy",
            "deepspeed", "accelerate", "datasets", "trl", "torchao")


def device_slug(device_name: str) -> str:
    """The device's name as a file-name part: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")


def versions() -> str:
    """The installed version of every package a benchmark may run, or "not installed"."""
    found = []
    for package in PACKAGES:
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} not installed")
    return ", ".join(found)


def cpu_name() -> str:
    """The CPU's model name, for the results files of CPU runs."""
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "CPU"


def write_results(directory: Path, name: str, lines: list[str], report: dict) -> None:
    """`directory/name.md` (the printed lines) and `directory/name.json` (the figures the docs render)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.md").write_text("\n".join(lines) + "\n")
    (directory / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
