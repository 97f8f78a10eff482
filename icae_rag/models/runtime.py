"""Device and dtype resolution: one place that turns user strings into torch objects."""

from __future__ import annotations

import torch

from ..errors import DeviceError

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
           "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn "auto", "cpu", "cuda", "cuda:1" or "mps" into a usable torch.device."""
    if isinstance(device, torch.device):
        device = str(device)
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(device, str):
        raise DeviceError(f"device must be a string such as 'cpu' or 'cuda', got {type(device).__name__}")
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} asked for but CUDA is not available here: use 'cpu' or 'auto'")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError("device 'mps' asked for but MPS is not available here: use 'cpu' or 'auto'")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Turn "auto", "fp32", "bf16" or "fp16" into a torch.dtype that works on `device`."""
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype is None or dtype == "auto":
        # bf16 halves memory on accelerators; on CPU fp32 is both faster and exact.
        resolved = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    elif isinstance(dtype, str) and dtype in _DTYPES:
        resolved = _DTYPES[dtype]
    else:
        raise DeviceError(f"unknown dtype {dtype!r}: use 'auto', 'fp32', 'bf16' or 'fp16'")
    if resolved == torch.float16 and device.type == "cpu":
        raise DeviceError("fp16 is not supported on CPU: use 'fp32' or 'bf16'")
    return resolved


def dtype_name(dtype: torch.dtype) -> str:
    """Short name of a dtype, as written in configs ("fp32", "bf16", "fp16")."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
