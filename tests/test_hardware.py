"""Dtype policy from the hardware: bfloat16 only where the CPU computes it natively (detection faked both ways)."""

from __future__ import annotations

import pytest

from om3db import hardware
from om3db.errors import ConfigError
from om3db.hardware import CpuInfo, detect_cpu, resolve_dtype

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_fp16

processor\t: 1
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse avx2
"""


def test_proc_cpuinfo_is_parsed(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    name, flags, vendor = hardware._proc_cpuinfo(path)
    assert name == "Intel(R) Xeon(R) Processor" and vendor == "GenuineIntel"
    assert {"avx2", "avx512_bf16", "amx_bf16", "amx_int8"} <= flags  # the first processor's line
    assert hardware._proc_cpuinfo(tmp_path / "missing") is None


def test_detect_cpu_on_this_machine():
    import torch

    cpu = detect_cpu()
    assert cpu is detect_cpu()  # read once per process
    assert cpu.capability == torch.backends.cpu.get_cpu_capability()
    assert cpu.flags <= set(hardware._KNOWN_FLAGS)
    assert cpu.bf16_native == bool(cpu.flags & set(hardware.BF16_FLAGS))
    assert cpu.to_dict()["bf16_native"] == cpu.bf16_native and cpu.name


def test_auto_picks_bfloat16_only_where_native(fake_cpu):
    fake_cpu(bf16=True)
    assert resolve_dtype("auto", "cpu") == (
        "bfloat16",
        "auto: bfloat16, the CPU computes it natively (amx_bf16, avx512_bf16; Fake Xeon with AMX)",
    )
    assert resolve_dtype(None, "cpu")[0] == "bfloat16"
    fake_cpu(bf16=False)
    dtype, reason = resolve_dtype(None, "cpu")
    assert dtype == "float32"
    assert reason.startswith(
        "auto: float32, the CPU has no native bfloat16 (no amx_bf16 or avx512_bf16 flag; Fake AMD EPYC, AVX2), "
        "where PyTorch emulates bfloat16 on it"
    )
    assert "~60x slower than float32" in reason


def test_bfloat16_request_refused_on_an_emulating_cpu(fake_cpu):
    fake_cpu(bf16=False)
    with pytest.raises(ConfigError) as err:
        resolve_dtype("bfloat16", "cpu")
    assert str(err.value) == (
        "dtype 'bfloat16' refused: this CPU, Fake AMD EPYC (AVX2; avx2), has no native bfloat16 (no amx_bf16 or "
        "avx512_bf16 flag) and PyTorch emulates bfloat16 on it (a bfloat16 2048x2048 matmul measured 1.3 GFLOP/s "
        "on an AVX2-only AMD EPYC, ~60x slower than float32 there). Use dtype 'float32' or 'auto' here, bfloat16 "
        "on a CPU with AMX / AVX512-BF16 or a GPU"
    )
    with pytest.raises(ConfigError, match=r"^dtype 'float16' refused: .* Use dtype 'float32' or 'auto' here"):
        resolve_dtype("float16", "cpu")
    assert resolve_dtype("float32", "cpu") == ("float32", "float32 requested")


def test_explicit_requests_on_a_native_cpu(fake_cpu):
    import torch

    fake_cpu(bf16=True)
    assert resolve_dtype("bfloat16", "cpu")[0] == "bfloat16"
    assert resolve_dtype(torch.bfloat16, "cpu")[0] == "bfloat16"
    assert resolve_dtype(torch.float32, "cpu") == ("float32", "float32 requested")
    with pytest.raises(ConfigError, match=r"^dtype 'float16' refused: .* Use dtype 'bfloat16' or 'auto' here"):
        resolve_dtype("float16", "cpu")  # the fake has no avx512_fp16


def test_unknown_dtype_and_device():
    with pytest.raises(ConfigError, match=r"^unknown dtype 'int8': use 'auto', 'float32', 'bfloat16' or 'float16'$"):
        resolve_dtype("int8", "cpu")
    with pytest.raises(ConfigError, match=r"^unknown dtype 'fp32'"):
        resolve_dtype("fp32")
    with pytest.raises(ConfigError, match=r"^unknown device 'tpu9': use 'auto', 'cpu' or 'cuda\[:N\]'$"):
        resolve_dtype("auto", "tpu9")


def test_cuda_policy_without_a_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake H100")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype(None, "cuda") == ("bfloat16", "auto: bfloat16, supported by the CUDA device (Fake H100)")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype(None, "cuda:0")[0] == "float16"
    assert resolve_dtype("float32", "cuda") == ("float32", "float32 requested")


def test_describe():
    cpu = CpuInfo("X", "AVX2", frozenset())
    assert cpu.describe() == "X (AVX2; no bf16/fp16 flags)" and not cpu.bf16_native and not cpu.fp16_native
