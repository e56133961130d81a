"""Which compute dtype the models run in, decided from the hardware (and why).

bfloat16 halves memory traffic and, on CPUs that compute it natively, runs matrix products faster
than float32: ~7-10x with Intel AMX, 2.2-2.6x on a Zen 4 EPYC with AVX512-BF16 (whole encoders there
1.6-1.9x). On CPUs without those instructions PyTorch *emulates* bfloat16: a 2048x2048 product
measured 1.3 GFLOP/s on an AVX2-only AMD EPYC, ~60x slower than float32 there. So the policy is:

- CUDA: bfloat16 where the GPU supports it, else float16;
- CPU: bfloat16 when the CPU flags include ``amx_bf16`` or ``avx512_bf16``, else float32;
- an explicit request wins, except bfloat16 / float16 on a CPU that would only emulate it, which is
  refused with the reason (ConfigError), before any model is loaded.

Vectors leave the encoders as float32 unit rows whatever the compute dtype.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from om3db.errors import ConfigError

__all__ = ["CpuInfo", "detect_cpu", "resolve_device", "resolve_dtype", "DTYPES", "BF16_FLAGS", "FP16_FLAGS"]

DTYPES = ("float32", "bfloat16", "float16")
"""Compute dtypes a model can run in (``"auto"`` / None picks one with `resolve_dtype`)."""

BF16_FLAGS = ("amx_bf16", "avx512_bf16")
"""CPU flags (as /proc/cpuinfo and lscpu name them) that mean bfloat16 matrix products run natively."""

FP16_FLAGS = ("amx_fp16", "avx512_fp16")
"""CPU flags that mean float16 arithmetic runs natively."""

_KNOWN_FLAGS = (*BF16_FLAGS, *FP16_FLAGS, "amx_tile", "avx512f", "avx2")

_EMULATED = (
    "PyTorch emulates {dtype} on it (a bfloat16 2048x2048 matmul measured 1.3 GFLOP/s on an AVX2-only "
    "AMD EPYC, ~60x slower than float32 there)"
)


@dataclass(frozen=True)
class CpuInfo:
    """What the dtype policy needs to know about the CPU."""

    name: str
    """Model name as lscpu / /proc/cpuinfo give it, e.g. "Intel(R) Xeon(R) Processor"."""
    capability: str
    """``torch.backends.cpu.get_cpu_capability()``: "AVX512", "AVX2", "DEFAULT", ..."""
    flags: frozenset[str]
    """The dtype-relevant flags present (a subset of amx_bf16, avx512_bf16, amx_fp16, avx512_fp16, amx_tile,
    avx512f, avx2)."""
    vendor: str = ""
    """``vendor_id`` from /proc/cpuinfo: "GenuineIntel", "AuthenticAMD"; "" when unknown. The float32
    fused-linear policy differs between an AVX-512 Xeon and an AVX-512 EPYC (`om3db.fused.fuse_linears_for`)."""

    @property
    def bf16_native(self) -> bool:
        """True when bfloat16 matrix products run in hardware (AMX or AVX512-BF16)."""
        return any(f in self.flags for f in BF16_FLAGS)

    @property
    def fp16_native(self) -> bool:
        """True when float16 arithmetic runs in hardware (AMX-FP16 or AVX512-FP16)."""
        return any(f in self.flags for f in FP16_FLAGS)

    def describe(self) -> str:
        """One line: name, capability and flags, e.g. ``Intel(R) Xeon(R) Processor (AVX512; amx_bf16, avx512_bf16)``."""
        flags = ", ".join(sorted(self.flags)) or "no bf16/fp16 flags"
        return f"{self.name} ({self.capability}; {flags})"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "vendor": self.vendor,
            "capability": self.capability,
            "flags": sorted(self.flags),
            "bf16_native": self.bf16_native,
        }


def _proc_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str], str] | None:
    """(model name, flags, vendor_id) of the first processor listed; None when the file cannot be read."""
    try:
        text = path.read_text()
    except OSError:
        return None
    name, flags, vendor = "", set(), ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return name, flags, vendor


@functools.lru_cache(maxsize=1)
def detect_cpu() -> CpuInfo:
    """The CPU's name, torch capability and bf16/fp16 flags (read once per process)."""
    import platform

    import torch

    capability = str(torch.backends.cpu.get_cpu_capability())
    found = _proc_cpuinfo()
    name, flags, vendor = found if found is not None else ("", set(), "")
    if not flags and hasattr(torch.cpu, "get_capabilities"):  # not Linux: ask torch's cpuinfo
        caps = torch.cpu.get_capabilities()
        flags = {k for k, v in caps.items() if v is True}
        name = name or str(caps.get("cpu_name", ""))
    return CpuInfo(
        name=name or platform.processor() or platform.machine(),
        capability=capability,
        flags=frozenset(f for f in _KNOWN_FLAGS if f in flags),
        vendor=vendor,
    )


def resolve_device(device: str = "auto"):
    """``torch.device`` for "auto" (CUDA when available, else CPU), "cpu" or "cuda[:N]"."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda[:N]'") from exc


def _name(dtype) -> str:
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {dtype!r}: use 'auto', 'float32', 'bfloat16' or 'float16'")
        return dtype
    text = str(dtype).removeprefix("torch.")
    if text not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}: use 'auto', 'float32', 'bfloat16' or 'float16'")
    return text


def resolve_dtype(requested=None, device="auto", *, cpu: CpuInfo | None = None) -> tuple[str, str]:
    """``(dtype name, reason)`` for a model on ``device``; ``requested`` None / "auto" applies the policy.

    ``requested`` may be "auto", None, "float32", "bfloat16", "float16" or a torch dtype. ``cpu``
    defaults to `detect_cpu()` (pass one to decide for another machine). Raises ConfigError for an
    unknown dtype or a half-precision request on a CPU that only emulates it.
    """
    import torch

    name = _name(requested)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if dev.type == "cuda":
        if name != "auto":
            return name, f"{name} requested"
        if torch.cuda.is_bf16_supported():
            return "bfloat16", f"auto: bfloat16, supported by the CUDA device ({torch.cuda.get_device_name(dev)})"
        return "float16", f"auto: float16, the CUDA device ({torch.cuda.get_device_name(dev)}) has no bfloat16"
    if dev.type != "cpu":
        return ("float32" if name == "auto" else name), f"{'auto: float32' if name == 'auto' else name} on {dev.type}"
    cpu = cpu or detect_cpu()
    if name == "float32":
        return name, "float32 requested"
    if name == "bfloat16" and not cpu.bf16_native:
        raise ConfigError(
            f"dtype 'bfloat16' refused: this CPU, {cpu.describe()}, has no native bfloat16 "
            f"(no {' or '.join(BF16_FLAGS)} flag) and {_EMULATED.format(dtype='bfloat16')}. "
            "Use dtype 'float32' or 'auto' here, bfloat16 on a CPU with AMX / AVX512-BF16 or a GPU"
        )
    if name == "float16" and not cpu.fp16_native:
        raise ConfigError(
            f"dtype 'float16' refused: this CPU, {cpu.describe()}, has no native float16 "
            f"(no {' or '.join(FP16_FLAGS)} flag) and PyTorch emulates it. Use dtype "
            f"{'bfloat16' if cpu.bf16_native else 'float32'!r} or 'auto' here, float16 on a GPU"
        )
    if name != "auto":
        return name, f"{name} requested; the CPU computes it natively ({', '.join(sorted(cpu.flags))})"
    if cpu.bf16_native:
        native = ", ".join(f for f in BF16_FLAGS if f in cpu.flags)
        return "bfloat16", f"auto: bfloat16, the CPU computes it natively ({native}; {cpu.name})"
    return "float32", (
        f"auto: float32, the CPU has no native bfloat16 (no {' or '.join(BF16_FLAGS)} flag; {cpu.name}, "
        f"{cpu.capability}), where {_EMULATED.format(dtype='bfloat16')}"
    )
