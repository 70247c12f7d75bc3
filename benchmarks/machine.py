"""The machine a benchmark runs on: what it is (recorded in every JSON document), whether it is idle,
and how much memory this process holds."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # the ones that change fp32/bf16 speed


# ------------------------------------------------------------------------------------------ memory
def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def rss_now_mb() -> float:
    return _status_mb("VmRSS") or float("nan")


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB): VmHWM, the high-water mark of its own address space.
    Not ru_maxrss: Linux carries it over fork + exec, so a subprocess would report its parent's RSS."""
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------- the machine
def warn_if_busy(mode_name: str) -> None:
    """Timings on a busy machine are distorted: say so (smoke runs time nothing)."""
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = 0.0
    if mode_name != "smoke" and load1 > 0.5:
        print(
            f"WARNING: the machine is not idle (1-minute load average {load1:.2f}); timings will be distorted",
            file=sys.stderr,
            flush=True,
        )


def _cpu_model_and_flags() -> tuple[str, str]:
    cpu, flags = platform.processor() or "", ""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return cpu, flags
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), cpu)
    flag_line = next((ln for ln in lines if ln.startswith("flags")), "")
    return cpu, " ".join(f for f in CPU_FLAGS if f" {f}" in flag_line)


def machine_info() -> dict:
    import torch
    import transformers

    cpu, flags = _cpu_model_and_flags()
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cpus = os.cpu_count()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "loadavg_at_start": load,
    }
