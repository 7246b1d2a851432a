"""Matrix products in bf16 and fp32 on this machine, and the precision the product chooses from them.

The two measurements the AVX2 machine showed (a 1024x1024 matmul, and a 576->1536 Linear at batch 64, the
embedded model's MLP shape, under bf16 autocast), median of 5 after a warm-up, then `compute_precision()`.
Run natively and under `ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2` (as `make bench` does) it shows
whether the emulation makes bf16 as slow as on a CPU without AVX-512-BF16.

    .venv/bin/python bench/precision.py           # a few seconds
"""

import time

import torch
from common import machine, median, print_table, result_suffix, write_result

from tao_dagster.hardware import compute_precision


def timed(work, repeats: int = 5) -> float:
    """Median seconds of `work()` after one warm-up call."""
    work()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        work()
        times.append(time.perf_counter() - began)
    return median(times)


def main() -> None:
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(1024, 1024).to(dtype), torch.randn(1024, 1024).to(dtype)
        matmul = timed(lambda a=a, b=b: a @ b, repeats=5 if dtype == torch.float32 else 2)
        linear, x = torch.nn.Linear(576, 1536), torch.randn(64, 576)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            layer = timed(lambda linear=linear, x=x: linear(x), repeats=20)
        rows.append(
            {
                "precision": str(dtype).removeprefix("torch."),
                "1024x1024 matmul GFLOP/s": round(2 * 1024**3 / matmul / 1e9, 1),
                "576->1536 Linear, batch 64, ms": round(layer * 1000, 3),
            }
        )
    precision = compute_precision()
    where = machine()
    print_table(rows, f"Matrix products on {where['cpu']}, dispatch {where['dispatch']}, {torch.get_num_threads()} threads")
    print(f"torch CPU capability: {torch.backends.cpu.get_cpu_capability()}")
    print(f"precision chosen: {precision.dtype} ({precision.reason})")
    write_result(f"precision{result_suffix()}", {"table": rows, "cpu_capability": torch.backends.cpu.get_cpu_capability()})


if __name__ == "__main__":
    main()
