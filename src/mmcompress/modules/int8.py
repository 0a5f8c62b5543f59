"""`W8A8Linear`: int8 weights and static int8 activations, run by an integer GEMM on CPU.

Saved state (plain tensors, so safetensors round-trips it): ``qweight`` int8 [out, in],
``weight_scale`` [out] (symmetric, per output channel), ``act_scale`` [1] (static, per
tensor), optionally ``input_scale`` [in] (SmoothQuant: the weight holds W·diag(s) and the
input is divided by s) and ``bias``. The function is

    y = (q(x / s) · qweightᵀ) · act_scale · weight_scale + bias,
    q(v) = clamp(round(v / act_scale), -128, 127).

On x86 CPUs the product runs in an integer GEMM on a weight packed once and cached beside
the state: the cache is not saved, it is rebuilt on the first call after the state changes
(load, ``.to()``, edits). Two are available to PyTorch: oneDNN's
(``torch.ops.onednn.qlinear_pointwise``; AMX / VNNI) and FBGEMM's static linear
(``torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32``, which quantizes the
input itself). Which is faster depends on the CPU and the layer's shape (on an AMD EPYC with
AVX-512 VNNI, FBGEMM was faster on five of CLIP ViT-B/32's six linear shapes in one run; see
`benchmarks.int8_kernels`), so by default (``kernel = "auto"``) `fastest_kernel` measures both
once per layer shape, keeping only those that reproduce the reference function (an
int16-saturating GEMM would not), and takes the faster. The choice is remembered per machine
(in the cache folder), because the kernels round differently: a model reloaded in another
process then computes exactly what it computed when it was saved. ``MMCOMPRESS_INT8_KERNEL``
(``onednn``, ``fbgemm`` or ``reference``) overrides the choice. Elsewhere (no integer kernel,
CUDA, non-float32 inputs, autograd) the same integer function is computed by dequantizing, so
results agree to float rounding.

Under ``torch.compile`` (see `mmcompress.compiled`) the layer is traced as PyTorch's
quantize → dequantize → linear reference pattern, which the x86 inductor backend (with
freezing) lowers to the same oneDNN int8 GEMM, fusing the activation quantization into the
op before it and the rescaling into the op after it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..io.atomic import write_text_atomic
from ..paths import cache_dir
from .registry import register_module
from .replace import filled

QMIN, QMAX = -128, 127

#: a layer's `kernel`: "auto" (the faster integer GEMM here), one by name, or "reference"
#: (always works: dequantize, then a float GEMM)
KERNELS = ("auto", "onednn", "fbgemm", "reference")
KERNEL_ENV = "MMCOMPRESS_INT8_KERNEL"


def _onednn_available() -> bool:
    return hasattr(torch.ops.onednn, "qlinear_pointwise") and torch.backends.mkldnn.is_available()


def _fbgemm_available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines and \
        hasattr(torch.ops.quantized, "linear_with_input_q_dq_qweight_dq_output_fp32")


#: zero point of the unsigned activation codes both kernels take. VNNI's int8 dot product
#: multiplies unsigned activations by signed weights; given signed activations, oneDNN on an
#: AMD EPYC with AVX-512 VNNI fell back to its reference loop (`ref_int8`), 740–980× slower
#: than fp32 (`benchmarks.int8_kernels --signed`).
U8_ZERO = 128


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


def quantize_activation(x: torch.Tensor, scale: float, multiplier: torch.Tensor | None = None,
                        unsigned: bool = False) -> torch.Tensor:
    """int8 codes clamp(round(x · multiplier / scale)) of a float tensor (`multiplier`: the
    per-channel 1 / s of SmoothQuant, or None); with `unsigned`, the same codes plus
    `U8_ZERO` as uint8 (the same bits with the sign bit flipped: exact, and one cheap pass)."""
    if multiplier is not None:
        x = x * multiplier
    if x.device.type == "cpu" and x.dtype == torch.float32 and _fused_quantize_ok():
        codes = _int8_view(torch.quantize_per_tensor(x, scale, 0, torch.qint8))
    else:
        codes = torch.round(x / scale).clamp_(QMIN, QMAX).to(torch.int8)
    return codes.view(torch.uint8).bitwise_xor_(U8_ZERO) if unsigned else codes


def _decomposed_ops() -> Any:
    """``torch.ops.quantized_decomposed`` (registered when its module is imported)."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers the ops

    return torch.ops.quantized_decomposed


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
        return self.gemm(quantize_activation(x, self.x_scale, self.multiplier, unsigned=True))

    def gemm(self, codes: torch.Tensor, zero_point: int = U8_ZERO) -> torch.Tensor:
        """The float output of the GEMM alone, on activation codes with `zero_point`."""
        return torch.ops.onednn.qlinear_pointwise(
            codes, self.x_scale, zero_point, self.packed, self.w_scale, self.w_zero, self.bias,
            1.0, 0, torch.float32, "none", [], "")


def prepacked_weight(mod: W8A8Linear, engine: str) -> Any:
    """`mod`'s int8 weight and bias packed by ``torch.ops.quantized.linear_prepack`` for a
    quantized engine ("fbgemm", "onednn"), as PyTorch's quantized linear ops take them."""
    previous = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = engine
        with warnings.catch_warnings():  # quantized tensors are deprecated upstream
            warnings.simplefilter("ignore")
            qweight = torch._make_per_channel_quantized_tensor(
                mod.qweight, mod.weight_scale.double(),
                torch.zeros(mod.out_features, dtype=torch.long), 0)
            bias = None if mod.bias is None else mod.bias.detach().float()
            return torch.ops.quantized.linear_prepack(qweight, bias)
    finally:
        torch.backends.quantized.engine = previous


class _FbgemmKernel:
    """A weight packed for FBGEMM's static int8 linear, which quantizes the input itself
    (unsigned codes, zero point `U8_ZERO`) and returns float32."""

    def __init__(self, mod: W8A8Linear) -> None:
        self.packed = prepacked_weight(mod, "fbgemm")
        self.x_scale = float(mod.act_scale)
        self.multiplier = mod.smoothing_multiplier()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.multiplier is not None:
            x = x * self.multiplier
        return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
            x, self.x_scale, U8_ZERO, self.packed)


_BUILDERS = {"onednn": (_onednn_available, _OnednnKernel),
             "fbgemm": (_fbgemm_available, _FbgemmKernel)}


def build_kernel(name: str, mod: W8A8Linear) -> Any:
    """Kernel `name` packed for `mod`, or None where it cannot run here."""
    available, build = _BUILDERS[name]
    if not available():
        return None
    try:
        kernel = build(mod)
        kernel(torch.zeros(1, mod.in_features))  # fail here, not in the model's call
    except RuntimeError:  # e.g. a build without int8 support for this CPU
        return None
    return kernel


@functools.cache
@torch.inference_mode()
def fastest_kernel(in_features: int, out_features: int) -> str:
    """The integer kernel to use for this layer shape: `KERNEL_ENV` when set, else the faster
    of those that reproduce the reference function here ("reference" when none does).

    The probe is a seeded random layer on 512 rows (a batch of 8 short sequences), one of
    them at the positive clipping limit in every feature (so a GEMM that saturates int16 sums
    gives itself away); each candidate's time is its best of 5 calls, interleaved with the
    others' after 2 warm-up rounds."""
    forced = os.environ.get(KERNEL_ENV)
    if forced:
        if forced not in KERNELS[1:]:
            raise UserError(f"{KERNEL_ENV}={forced!r}: expected one of "
                            f"{', '.join(KERNELS[1:])}")
        return forced
    gen = torch.Generator().manual_seed(0)  # the global generator is left alone
    weight = torch.randn(out_features, in_features, generator=gen)
    weight[: max(1, out_features // 8)].abs_()  # rows whose sums grow rather than cancel
    probe = W8A8Linear(in_features, out_features, bias=False)
    probe._store(weight, None, 1.0 / QMAX, None)
    x = torch.randn(512, in_features, generator=gen).clamp(-1, 1)
    x[0] = 1.0
    ref = probe.reference_forward(x)
    tol = 1e-4 * float(ref.abs().max())
    kernels = {}
    for name in _BUILDERS:
        kernel = build_kernel(name, probe)
        if kernel is not None and (kernel(x) - ref).abs().max() <= tol:
            kernels[name] = kernel
    if not kernels:
        return "reference"
    return remembered(f"{in_features}x{out_features} {'/'.join(sorted(kernels))}",
                      lambda: _time_kernels(kernels, x), set(kernels))


@functools.cache
def _machine() -> str:
    """This CPU and PyTorch build, which decide which kernel is faster."""
    model = platform.processor()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((ln.split(":", 1)[1].strip() for ln in lines
                      if ln.startswith("model name")), model)
    return f"{platform.machine()} {model} torch {torch.__version__}"


def remembered(key: str, choose: Callable[[], str], valid: set[str]) -> str:
    """The kernel chosen for `key` on this machine before (if still in `valid`), else
    `choose()`, written down for the next process (best effort: a read-only cache is fine)."""
    path = cache_dir() / "int8_kernels.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # unreadable or malformed: measured again
        known = {}
    known = {k: v for k, v in known.items() if isinstance(v, str)} \
        if isinstance(known, dict) else {}
    entry = f"{_machine()} | {key}"
    if known.get(entry) in valid:
        return known[entry]
    name = known[entry] = choose()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(known, indent=1, sort_keys=True))
    return name


def _time_kernels(kernels: dict[str, Any], x: torch.Tensor) -> str:
    """The fastest of `kernels` on input `x`."""
    seconds: dict[str, list[float]] = {name: [] for name in kernels}
    for round_ in range(7):  # interleaved, so a busy moment hits every candidate alike
        for name, kernel in kernels.items():
            start = time.perf_counter()
            kernel(x)
            if round_ >= 2:  # the first two rounds warm up
                seconds[name].append(time.perf_counter() - start)
    return min(seconds, key=lambda name: min(seconds[name]))


@register_module
class W8A8Linear(nn.Module):
    """A linear layer with int8 weights and statically quantized int8 inputs."""

    derived_buffers = ("weight_zero",)  # made by `prepare_compile`: not saved

    def __init__(self, in_features: int, out_features: int, bias: bool,
                 input_scale: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("act_scale", torch.ones(1))
        self.register_buffer("input_scale", torch.ones(in_features) if input_scale else None)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self.kernel = KERNELS[0]  # see `KERNELS`; not saved
        self._cache: dict[str, tuple[tuple, Any]] = {}  # derived from the state; not saved

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
        mod._store(linear.weight, linear.bias, act_scale, input_scale)
        return mod

    @torch.no_grad()
    def _store(self, weight: torch.Tensor, bias: torch.Tensor | None, act_scale: float,
               input_scale: torch.Tensor | None) -> None:
        w = weight.detach().float().reshape(self.out_features, -1)
        if input_scale is not None:
            w = w * input_scale
            self.input_scale.copy_(input_scale)
        scale = w.abs().amax(dim=1) / QMAX
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        self.qweight.copy_(torch.round(w / scale[:, None]).clamp(-QMAX, QMAX).to(torch.int8))
        self.weight_scale.copy_(scale)
        self.act_scale.fill_(act_scale)
        if bias is not None:
            self.bias.copy_(bias.detach().float())

    @torch.no_grad()
    def divide_outputs(self, s: torch.Tensor) -> None:
        """Compute y / s per output channel from now on (exact: scales and bias only)."""
        self.weight_scale.div_(s)
        if self.bias is not None:
            self.bias.div_(s)
        self._cache = {}

    @torch.no_grad()
    def restore_outputs(self, weight_scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Put back output scales (and bias) saved before `divide_outputs`."""
        self.weight_scale.copy_(weight_scale)
        if bias is not None:
            self.bias.copy_(bias)
        self._cache = {}

    def set_input_scale(self, s: torch.Tensor | None) -> None:
        """Divide inputs by `s` at run time (None: inputs arrive already divided)."""
        self.input_scale = None if s is None else s.detach().clone()
        self._cache = {}

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

    def _cached(self, name: str, build: Any) -> Any:
        """`build()` once per state of the module's tensors."""
        key = self._state_key()
        hit = self._cache.get(name)
        if hit is None or hit[0] != key:
            hit = self._cache[name] = (key, build())
        return hit[1]

    def _kernel(self) -> Any:
        """The packed kernel for the current state (built once per state), or None."""
        return self._cached("kernel", self._build_kernel)

    def _build_kernel(self) -> Any:
        if self.qweight.device.type != "cpu":
            return None
        name = self.kernel
        if name == "auto":
            name = fastest_kernel(self.in_features, self.out_features)
        return None if name == "reference" else build_kernel(name, self)

    def _fast_ok(self, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.dtype == torch.float32
                and not (torch.is_grad_enabled() and x.requires_grad))

    def prepare_compile(self) -> None:
        """Freeze the constants the traced forward reads as plain values (call again after
        editing the layer's state)."""
        self._graph_act_scale = float(self.act_scale)
        self.register_buffer("weight_zero", torch.zeros(self.out_features, dtype=torch.long,
                                                        device=self.qweight.device),
                             persistent=False)

    def graph_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The integer function as the quantize → dequantize → linear ops of PyTorch's reference
        quantized representation (what ``torch.compile`` traces), activations as uint8 codes
        with zero point `U8_ZERO`."""
        scale = getattr(self, "_graph_act_scale", None)
        if scale is None:
            raise RuntimeError("W8A8Linear.prepare_compile() must run before torch.compile "
                               "(mmcompress.compiled.compile_towers does this)")
        if self.input_scale is not None:
            x = x / self.input_scale
        qd = _decomposed_ops()  # unsigned codes, as the eager kernel: see `U8_ZERO`
        lo, hi = QMIN + U8_ZERO, QMAX + U8_ZERO
        codes = qd.quantize_per_tensor.default(x, scale, U8_ZERO, lo, hi, torch.uint8)
        xd = qd.dequantize_per_tensor.default(codes, scale, U8_ZERO, lo, hi, torch.uint8)
        wd = qd.dequantize_per_channel.default(self.qweight, self.weight_scale, self.weight_zero, 0,
                                               QMIN, QMAX, torch.int8)
        return F.linear(xd, wd, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return self.graph_forward(x)
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
        return filled(nn.Linear(self.in_features, self.out_features, bias=self.bias is not None),
                      self.dense_weight(), self.bias)

    def _apply(self, fn, recurse=True):  # .to(), .float(), …: the packed weight is stale
        self._cache = {}
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:  # packed oneDNN weights do not copy or pickle
        state = self.__dict__.copy()
        state["_cache"] = {}
        state.pop("_graph_act_scale", None)
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


def is_patchify(conv: nn.Conv2d) -> bool:
    """A convolution whose windows tile the input (kernel = stride, no padding): a linear
    layer over flattened patches, such as a ViT patch embedding."""
    return (tuple(conv.kernel_size) == tuple(conv.stride)
            and (conv.padding == "valid" or conv.padding == (0, 0))
            and tuple(conv.dilation) == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


@register_module
class W8A8PatchConv2d(W8A8Linear):
    """A patchifying convolution run as `W8A8Linear` over flattened (channel, row, column)
    patches, the column order of the flattened filter and of ``F.unfold``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: list[int], bias: bool,
                 input_scale: bool = False) -> None:
        kh, kw = kernel_size
        super().__init__(in_channels * kh * kw, out_channels, bias, input_scale)
        self.in_channels, self.kernel_size = in_channels, [kh, kw]
        self.out_channels = out_channels

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, act_scale: float,
                  input_scale: torch.Tensor | None = None) -> W8A8PatchConv2d:
        """Quantize a patchifying `conv` (`input_scale`: one per flattened patch value)."""
        if not is_patchify(conv):
            raise ValueError(f"{conv} is not a patchifying convolution (kernel = stride, "
                             "no padding, dilation or groups)")
        mod = cls(conv.in_channels, conv.out_channels, list(conv.kernel_size),
                  conv.bias is not None, input_scale is not None)
        mod._store(conv.weight, conv.bias, act_scale, input_scale)
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (b, c, h, w) = self.kernel_size, x.shape
        hp, wp = h // kh, w // kw
        patches = x[:, :, : hp * kh, : wp * kw].reshape(b, c, hp, kh, wp, kw)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(b * hp * wp, c * kh * kw)
        return super().forward(patches).view(b, hp, wp, self.out_features).permute(0, 3, 1, 2)

    @property
    def weight(self) -> torch.Tensor:
        """The dense filter (cached per state: model code may read it on every call; traced
        as ops under ``torch.compile``, where unused reads are dropped)."""
        def dense() -> torch.Tensor:
            return self.dense_weight().view(self.out_features, self.in_channels,
                                            *self.kernel_size)

        return dense() if torch.compiler.is_compiling() else self._cached("dense", dense)

    def to_dense(self) -> nn.Conv2d:
        return filled(nn.Conv2d(self.in_channels, self.out_features, self.kernel_size,
                                self.kernel_size, bias=self.bias is not None),
                      self.weight, self.bias)

    def spec(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "in_channels": self.in_channels,
                "out_channels": self.out_features, "kernel_size": self.kernel_size,
                "bias": self.bias is not None, "input_scale": self.input_scale is not None}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> W8A8PatchConv2d:
        return cls(spec["in_channels"], spec["out_channels"], spec["kernel_size"], spec["bias"],
                   spec.get("input_scale", False))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_features}, kernel_size={self.kernel_size}, "
                f"w8a8, act_scale={float(self.act_scale):.4g}"
                + (", input_scale" if self.input_scale is not None else ""))
