"""`W8A8Linear`: int8 weights and static int8 activations, run by an integer GEMM on CPU.

Saved state (plain tensors, so safetensors round-trips it): ``qweight`` int8 [out, in],
``weight_scale`` [out] (symmetric, per output channel), ``act_scale`` [1] (static, per
tensor), optionally ``input_scale`` [in] (SmoothQuant: the weight holds W·diag(s) and the
input is divided by s) and ``bias``. The function is

    y = (q(x / s) · qweightᵀ) · act_scale · weight_scale + bias,
    q(v) = clamp(round(v / act_scale), -128, 127).

On x86 CPUs the product runs in oneDNN's int8 GEMM (``torch.ops.onednn.qlinear_pointwise``,
AMX / VNNI where present) on a weight packed once and cached beside the state: the cache is
not saved, it is rebuilt on the first call after the state changes (load, ``.to()``, edits).
Elsewhere (no oneDNN, CUDA, non-float32 inputs, autograd) the same integer function is
computed by dequantizing, so results agree to float rounding.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_module

QMIN, QMAX = -128, 127

#: integer kernels tried in order; "reference" always works
KERNELS = ("onednn", "reference")


def _onednn_available() -> bool:
    return hasattr(torch.ops.onednn, "qlinear_pointwise") and torch.backends.mkldnn.is_available()


def _int8_view(q: torch.Tensor) -> torch.Tensor:
    """The int8 codes of a qint8 tensor without a copy (``int_repr`` copies)."""
    return torch.empty(0, dtype=torch.int8, device=q.device).set_(
        q.untyped_storage(), q.storage_offset(), q.size(), q.stride())


@functools.cache
def _fused_quantize_ok() -> bool:
    """Whether ``torch.quantize_per_tensor`` (one fused pass, ~4× faster than round, clamp
    and cast) exists and agrees with the plain formula; it is deprecated upstream."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = torch.linspace(-300, 300, 1201)
            codes = _int8_view(torch.quantize_per_tensor(x, 1.0, 0, torch.qint8))
        return torch.equal(codes, torch.round(x).clamp(QMIN, QMAX).to(torch.int8))
    except (AttributeError, RuntimeError):
        return False


def quantize_activation(x: torch.Tensor, scale: float,
                        multiplier: torch.Tensor | None = None) -> torch.Tensor:
    """int8 codes clamp(round(x · multiplier / scale)) of a float tensor (`multiplier`: the
    per-channel 1 / s of SmoothQuant, or None)."""
    if multiplier is not None:
        x = x * multiplier
    if x.device.type == "cpu" and x.dtype == torch.float32 and _fused_quantize_ok():
        return _int8_view(torch.quantize_per_tensor(x, scale, 0, torch.qint8))
    return torch.round(x / scale).clamp_(QMIN, QMAX).to(torch.int8)


class _OnednnKernel:
    """A weight packed for oneDNN plus the constants its call takes."""

    def __init__(self, mod: W8A8Linear) -> None:
        self.packed = torch.ops.onednn.qlinear_prepack(mod.qweight, None)
        self.w_scale = mod.weight_scale.float().contiguous()
        self.w_zero = torch.zeros(mod.out_features, dtype=torch.long)
        self.bias = None if mod.bias is None else mod.bias.detach().float().contiguous()
        self.x_scale = float(mod.act_scale)
        self.multiplier = mod.smoothing_multiplier()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        qx = quantize_activation(x, self.x_scale, self.multiplier)
        return torch.ops.onednn.qlinear_pointwise(
            qx, self.x_scale, 0, self.packed, self.w_scale, self.w_zero, self.bias,
            1.0, 0, torch.float32, "none", [], "")


@register_module
class W8A8Linear(nn.Module):
    """A linear layer with int8 weights and statically quantized int8 inputs."""

    def __init__(self, in_features: int, out_features: int, bias: bool,
                 input_scale: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("act_scale", torch.ones(1))
        self.register_buffer("input_scale", torch.ones(in_features) if input_scale else None)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self.kernel = KERNELS[0]  # preferred integer kernel; "reference" forces dequantizing
        self._cache: tuple[tuple, Any] | None = None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, act_scale: float,
                    input_scale: torch.Tensor | None = None) -> W8A8Linear:
        """Quantize `linear`'s weight (times `input_scale`, if given) per output channel.

        Args:
            linear: the dense layer.
            act_scale: static scale of the (smoothed) input, threshold / 127.
            input_scale: SmoothQuant scales s; inputs are divided by s.
        """
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None,
                  input_scale is not None)
        w = linear.weight.detach().float()
        if input_scale is not None:
            w = w * input_scale
            mod.input_scale.copy_(input_scale)
        scale = w.abs().amax(dim=1) / QMAX
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        mod.qweight.copy_(torch.round(w / scale[:, None]).clamp(-QMAX, QMAX).to(torch.int8))
        mod.weight_scale.copy_(scale)
        mod.act_scale.fill_(act_scale)
        if linear.bias is not None:
            mod.bias.copy_(linear.bias.detach().float())
        return mod

    def smoothing_multiplier(self) -> torch.Tensor | None:
        """What the input is multiplied by before quantization: 1 / s (None: no smoothing)."""
        return None if self.input_scale is None else (1.0 / self.input_scale.float()).contiguous()

    # -- the integer path -------------------------------------------------------------
    def _state_key(self) -> tuple:
        key: list = [self.kernel]
        for t in (self.qweight, self.weight_scale, self.act_scale, self.input_scale, self.bias):
            if t is None:
                key.append(None)
                continue
            try:
                version = t._version
            except RuntimeError:  # inference tensors carry no version counter
                version = -1
            key.append((t.data_ptr(), version, t.device))
        return tuple(key)

    def _kernel(self) -> Any:
        """The packed kernel for the current state (built once per state), or None."""
        key = self._state_key()
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        kernel = None
        if self.kernel == "onednn" and self.qweight.device.type == "cpu" and _onednn_available():
            try:
                kernel = _OnednnKernel(self)
                kernel(torch.zeros(1, self.in_features))  # fail here, not in the model's call
            except RuntimeError:  # e.g. a oneDNN build without int8 support for this CPU
                kernel = None
        self._cache = (key, kernel)
        return kernel

    def _fast_ok(self, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.dtype == torch.float32
                and not (torch.is_grad_enabled() and x.requires_grad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fast_ok(x):
            kernel = self._kernel()
            if kernel is not None:
                return kernel(x)
        return self.reference_forward(x)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same integer function by dequantizing (any device or dtype)."""
        multiplier = self.smoothing_multiplier()
        codes = quantize_activation(x.float(), float(self.act_scale), multiplier)
        acc = F.linear(codes.float(), self.qweight.float())
        y = acc * (self.act_scale * self.weight_scale)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)

    # -- conversions and manifest -----------------------------------------------------
    def dense_weight(self) -> torch.Tensor:
        """The float weight computing the same function on unquantized inputs."""
        w = self.qweight.float() * self.weight_scale[:, None]
        return w if self.input_scale is None else w / self.input_scale

    @property
    def weight(self) -> torch.Tensor:
        """Dense view of the weight, for model code that reads ``layer.weight``."""
        return self.dense_weight()

    def to_dense(self) -> nn.Linear:
        """The dense layer (activations are no longer quantized)."""
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        dense.weight.data.copy_(self.dense_weight())
        if self.bias is not None:
            dense.bias.data.copy_(self.bias)
        return dense

    def _apply(self, fn, recurse=True):  # .to(), .float(), …: the packed weight is stale
        self._cache = None
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:  # packed oneDNN weights do not copy or pickle
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    def spec(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "in_features": self.in_features,
                "out_features": self.out_features, "bias": self.bias is not None,
                "input_scale": self.input_scale is not None}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> W8A8Linear:
        return cls(spec["in_features"], spec["out_features"], spec["bias"],
                   spec.get("input_scale", False))

    def logical_params(self) -> int:
        """Parameters of the dense layer this module stands for."""
        return self.in_features * self.out_features + (self.out_features if self.bias is not None
                                                       else 0)

    def extra_repr(self) -> str:
        smooth = ", input_scale" if self.input_scale is not None else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"w8a8, act_scale={float(self.act_scale):.4g}{smooth}")
