"""What the benchmarks share: the machine they ran on, a printed table and the JSON they write."""

import json
import os
import platform
import statistics
import sys
from pathlib import Path

# `python bench/<name>.py` puts bench/ on sys.path, not the checkout: put it first, so `tests.support` imports and
# `tao_dagster` is this checkout's even where the editable install points at another worktree.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tao_dagster.hardware import DISPATCH_SETTINGS, compute_cores, compute_precision
from tao_dagster.paths import PROJECT_ROOT

RESULTS = PROJECT_ROOT / "bench" / "results"
# `make bench` runs every script twice: natively, and with oneDNN and ATen limited to AVX2, as on a CPU
# without AVX-512 (most laptops and cloud VMs), where bf16 is the slow path.
AVX2_EMULATION = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def emulated() -> bool:
    return all(os.environ.get(name, "").lower() == value.lower() for name, value in AVX2_EMULATION.items())


def result_suffix() -> str:
    """Results of the AVX2 emulation go beside the native ones, as <name>-avx2.json."""
    return "-avx2" if emulated() else ""


def project_home(home: str | None, prefix: str) -> Path:
    """A project home for a benchmark: `home`, or a new temporary folder, sharing the checkout's converted
    embedded model so the one-time GGUF conversion is not timed."""
    import tempfile

    path = Path(home or tempfile.mkdtemp(prefix=prefix))
    converted = PROJECT_ROOT / ".tao_home" / "cache" / "models"
    if converted.is_dir() and not (path / "cache" / "models").exists():
        (path / "cache").mkdir(parents=True, exist_ok=True)
        (path / "cache" / "models").symlink_to(converted)
    return path


def machine() -> dict:
    """The CPU, cores, memory, load, dispatch settings and precision the numbers were measured under."""
    import psutil

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line), "")
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "compute_cores": len(compute_cores()),
        "dispatch": {name: os.environ[name] for name in DISPATCH_SETTINGS if name in os.environ} or "native",
        "precision": compute_precision().dtype,
        "precision_reason": compute_precision().reason,
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_table(rows: list[dict], title: str) -> None:
    """Rows of dicts with the same keys, as an aligned text table."""
    print(f"\n{title}")
    columns = list(rows[0])
    cells = [[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def write_result(name: str, result: dict) -> Path:
    out = RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), **result}, indent=2, default=str))
    print(f"\nwritten to {out}")
    return out
