"""What this machine computes fast: the precision every model path uses, and the cores it may use.

bf16 is twice the fp32 rate on CPUs with AVX-512-BF16 or AMX, and on the many CPUs without them (AVX2
laptops, most cloud VMs) it is a hundred times slower: torch falls back to a scalar matrix product and
vLLM to torch's linear. So the precision is decided per machine, once, in `compute_precision`, and the
generation engines, training, the merged checkpoint and the local scorers all ask it.

On a CPU the decision needs both signs: the ISA flags in /proc/cpuinfo, and a short timed matrix product
in each precision (the flags alone cannot see a oneDNN limited by ONEDNN_MAX_CPU_ISA, a hypervisor that
advertises what it traps, or a torch build without the kernels). The probe's verdict is stored per machine
in the project cache, so every step and process on a machine makes the same choice whatever the load at
that moment. `TAO_DTYPE=bfloat16|float32` overrides it (`auto`, the default, decides).
"""

import contextlib
import hashlib
import json
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tao_dagster.paths import tao_home

DTYPES = ("bfloat16", "float32")
FAST_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Environment settings that change which kernels oneDNN and ATen dispatch to, and so the probe's answer.
DISPATCH_SETTINGS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
# bf16 must beat fp32 by this much in the probe: where it is fast it is 2-3x, where it is slow 1/100x.
PROBE_MIN_SPEEDUP = 1.2


@dataclass(frozen=True)
class Precision:
    dtype: str  # "bfloat16" or "float32"
    reason: str

    @property
    def bf16(self) -> bool:
        return self.dtype == "bfloat16"

    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    def metadata(self) -> dict[str, str]:
        """What steps show in their metadata and MLflow params."""
        return {"precision": self.dtype, "precision_reason": self.reason}


def cpu_flags() -> set[str]:
    line = next((line for line in _cpuinfo_lines() if line.startswith(("flags", "Features"))), "")
    return set(line.partition(":")[2].split())


def compute_precision() -> Precision:
    """The precision of this machine's model computations: TAO_DTYPE if set, else decided (see the module doc)."""
    setting = os.environ.get("TAO_DTYPE", "auto").strip().lower()
    if setting in DTYPES:
        return Precision(setting, f"TAO_DTYPE={setting}")
    if setting != "auto":
        raise ValueError(f"TAO_DTYPE: {setting!r} is not auto, bfloat16 or float32")
    import torch

    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return Precision("bfloat16", f"GPU {torch.cuda.get_device_name()} supports bf16")
        return Precision("float32", f"GPU {torch.cuda.get_device_name()} has no bf16 support")
    fast = sorted(cpu_flags().intersection(FAST_BF16_FLAGS))
    if not fast:
        return Precision("float32", f"CPU has no {' or '.join(FAST_BF16_FLAGS)}: bf16 would run on slow fallback kernels")
    rates = probe_rates()
    speedup = rates["bfloat16"] / rates["float32"]
    measured = f"probe {rates['bfloat16']:.0f} GFLOP/s in bf16 vs {rates['float32']:.0f} in fp32"
    if speedup >= PROBE_MIN_SPEEDUP:
        return Precision("bfloat16", f"CPU has {', '.join(fast)}; {measured}")
    return Precision("float32", f"CPU has {', '.join(fast)} but bf16 is slow here ({measured})")


def machine_key() -> str:
    """What the probe's answer depends on: the CPU, its flags, torch's version and the dispatch settings."""
    import torch

    cpu = next((line for line in _cpuinfo_lines() if line.startswith("model name")), platform.processor())
    settings = {name: os.environ.get(name, "") for name in DISPATCH_SETTINGS}
    spec = json.dumps([cpu, sorted(cpu_flags()), torch.__version__, settings], sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def probe_rates(cache: Path | None = None) -> dict[str, float]:
    """GFLOP/s of a 512x512 matrix product in bf16 and fp32 on this machine, measured once and stored."""
    cache = cache or tao_home() / "cache" / "precision-probe.json"
    key = machine_key()
    try:
        stored = json.loads(cache.read_text())
    except (OSError, ValueError):
        stored = {}
    if key not in stored:
        stored[key] = {dtype: measure_matmul(dtype) for dtype in DTYPES}
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stored, indent=1))
        tmp.replace(cache)
    return stored[key]


def measure_matmul(dtype: str, size: int = 512, budget_s: float = 0.5) -> float:
    """Best-of-a-few GFLOP/s of one size x size product; stops early when one product takes the whole budget."""
    import torch

    a, b = (torch.randn(size, size).to(getattr(torch, dtype)) for _ in range(2))
    a @ b  # warm-up: kernel selection and first-touch
    best, spent = float("inf"), 0.0
    for _ in range(5):
        began = time.perf_counter()
        a @ b
        took = time.perf_counter() - began
        best, spent = min(best, took), spent + took
        if spent > budget_s:
            break
    return 2 * size**3 / best / 1e9


def compute_cores() -> list[int]:
    """The CPUs this process may use, one per physical core (a core's second hardware thread adds little to
    matrix products and halves each thread's share of the core)."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    seen, cores = set(), []
    for cpu in allowed:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            core = (topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()
        except OSError:
            core = ("", str(cpu))
        if core not in seen:
            seen.add(core)
            cores.append(cpu)
    return cores


def vllm_cpu_environment(tensor_parallel_size: int = 1) -> dict[str, str]:
    """vLLM's CPU settings for an engine on all of this process's cores.

    vLLM's own `auto` binding reserves one core per rank for its scheduler process, which on 2 cores halves
    the rate; here the model's threads get every core (split between tensor-parallel ranks), and with one rank
    the engine runs in this process (no engine-core and worker processes: start-up 5 s instead of 24 s, nothing
    to compete for the cores or outlive a Ctrl-C or a kill).
    """
    cores = compute_cores()
    per_rank = max(len(cores) // tensor_parallel_size, 1)
    ranks = [cores[i * per_rank : (i + 1) * per_rank] or cores[-1:] for i in range(tensor_parallel_size)]
    settings = {
        "VLLM_CPU_OMP_THREADS_BIND": "|".join(",".join(map(str, rank)) for rank in ranks),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "VLLM_CPU_KVCACHE_SPACE": "2",  # GiB
    }
    if tensor_parallel_size == 1:
        settings["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return settings


def vllm_executor_backend(tensor_parallel_size: int = 1) -> str | None:
    """vLLM's `distributed_executor_backend` under the environment in force: `uni` (the model in this process)
    when VLLM_ENABLE_V1_MULTIPROCESSING=0 and one rank, else None (vLLM's own choice)."""
    return "uni" if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0" and tensor_parallel_size == 1 else None


@contextlib.contextmanager
def scoped_environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables while an engine starts (processes it spawns inherit them), then restore them,
    so that servers and engines started later in this process do not inherit them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
