"""What CPU a figure was measured on, from the standard library alone (the load benchmarks' clients stay light)."""

from __future__ import annotations

import os
import platform
from typing import Any


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_summary() -> dict[str, Any]:
    """Name, cores, AVX512-BF16 and AMX support, and the load average when the run started."""
    flags = cpu_flags()
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags,
            "amx": "amx_tile" in flags, "load_average_at_start": round(os.getloadavg()[0], 2)}
