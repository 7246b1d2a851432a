"""The precision and cores decided per machine (tao_dagster/hardware.py), with faked CPU flags and probe results."""

import os

import pytest

from tao_dagster import hardware
from tao_dagster.hardware import compute_cores, compute_precision, vllm_cpu_environment, vllm_executor_backend

FAST = {"bfloat16": 430.0, "float32": 160.0}  # GFLOP/s as measured on a CPU with AVX-512-BF16
SLOW = {"bfloat16": 0.9, "float32": 180.0}  # the same CPU with oneDNN limited to AVX2


@pytest.fixture
def cpu_machine(monkeypatch, tmp_path):
    """No GPU, an empty project home for the probe cache, no TAO_DTYPE; returns the list of probes measured."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("TAO_HOME", str(tmp_path))
    monkeypatch.delenv("TAO_DTYPE", raising=False)
    measured = []
    monkeypatch.setattr(hardware, "measure_matmul", lambda dtype: measured.append(dtype) or rates[dtype])
    rates = dict(FAST)
    return measured, rates


def test_a_cpu_without_fast_bf16_flags_computes_in_float32_without_probing(cpu_machine, monkeypatch):
    measured, _ = cpu_machine
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "fma", "avx512f"})
    precision = compute_precision()
    assert precision.dtype == "float32" and "avx512_bf16" in precision.reason
    assert measured == []


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_fast_bf16_flags_and_a_fast_probe_give_bfloat16(cpu_machine, monkeypatch, flag):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", flag})
    precision = compute_precision()
    assert precision.bf16 and flag in precision.reason and "430 GFLOP/s" in precision.reason
    assert precision.metadata() == {"precision": "bfloat16", "precision_reason": precision.reason}


def test_flags_with_a_slow_probe_give_float32(cpu_machine, monkeypatch):
    """A oneDNN limited to AVX2 (or a hypervisor advertising what it traps): the flags say fast, the probe does not."""
    _, rates = cpu_machine
    rates.update(SLOW)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx512_bf16"})
    precision = compute_precision()
    assert precision.dtype == "float32" and "slow" in precision.reason


def test_the_probe_is_measured_once_per_machine_and_dispatch_setting(cpu_machine, monkeypatch, tmp_path):
    measured, rates = cpu_machine
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx512_bf16"})
    assert compute_precision().bf16 and compute_precision().bf16
    assert measured == ["bfloat16", "float32"]  # the second call read the stored result
    assert (tmp_path / "cache" / "precision-probe.json").is_file()
    rates.update(SLOW)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # another dispatch: measured anew
    assert compute_precision().dtype == "float32"
    assert len(measured) == 4


@pytest.mark.parametrize("setting", ["bfloat16", "float32", "BFloat16"])
def test_tao_dtype_overrides_the_decision(cpu_machine, monkeypatch, setting):
    measured, _ = cpu_machine
    monkeypatch.setattr(hardware, "cpu_flags", lambda: set())
    monkeypatch.setenv("TAO_DTYPE", setting)
    precision = compute_precision()
    assert precision.dtype == setting.lower() and "TAO_DTYPE" in precision.reason and measured == []


def test_a_bad_tao_dtype_names_the_setting(monkeypatch):
    monkeypatch.setenv("TAO_DTYPE", "int8")
    with pytest.raises(ValueError, match="TAO_DTYPE: 'int8' is not auto, bfloat16 or float32"):
        compute_precision()


def test_a_gpu_with_bf16_computes_in_bfloat16(monkeypatch):
    import torch

    monkeypatch.delenv("TAO_DTYPE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "Test GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert compute_precision().dtype == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert compute_precision().dtype == "float32"


def test_the_real_probe_measures_both_precisions():
    for dtype in ("bfloat16", "float32"):
        assert hardware.measure_matmul(dtype, size=64) > 0


def test_vllm_gets_every_core_of_this_process():
    cores = compute_cores()
    assert cores and set(cores) <= os.sched_getaffinity(0)
    one_rank = vllm_cpu_environment()
    assert one_rank["VLLM_CPU_OMP_THREADS_BIND"] == ",".join(map(str, cores))
    assert one_rank["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0" and one_rank["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    two_ranks = vllm_cpu_environment(tensor_parallel_size=2)
    assert two_ranks["VLLM_CPU_OMP_THREADS_BIND"].count("|") == 1 and "VLLM_ENABLE_V1_MULTIPROCESSING" not in two_ranks


def test_the_engine_runs_in_process_exactly_when_the_environment_says_so(monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    assert vllm_executor_backend() == "uni" and vllm_executor_backend(tensor_parallel_size=2) is None
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # a user's own setting wins over the default
    assert vllm_executor_backend() is None
