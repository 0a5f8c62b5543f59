"""Fitting a layer to a reference model's outputs (asymmetric calibration, as in GPTAQ).

Calibrated with a reference (see `calibrate_layers`), a layer's collector holds H = XᵀX of the
inputs it receives in the model being compressed and C = X_refᵀX against the inputs the same
layer receives in the uncompressed model.
"""

from __future__ import annotations

import torch

from .hessian import damped


def reference_fit(weight: torch.Tensor, hessian: torch.Tensor, cross: torch.Tensor | None,
                  damp: float) -> torch.Tensor:
    """M = W·(C + λI)·(H + λI)⁻¹ (float64): the map from this layer's inputs X closest to the
    reference outputs W·X_ref, with H = XᵀX and C = X_refᵀX; W itself when no reference ran.

    M minimises ‖W·X_ref − M·X‖² + λ‖M − W‖²: least squares, regularised toward the layer's
    own weight (not toward zero), so that directions the calibration inputs barely cover keep
    W, and M = W exactly when the inputs match the reference's (C = H). λ is `damp` times the
    mean of diag H, as in `damped`.

    Since ‖W·X_ref − A·X‖² = ‖W·X_ref − M·X‖² + ‖(M − A)·X‖² for any A (at λ → 0), a method
    that minimises ‖(W − A)·X‖ over its constrained A (a low rank, a sparsity pattern)
    minimises the error to the reference outputs when given M instead of W: it then also
    undoes, as far as this layer can, the error that earlier compressed layers put into X.
    """
    w = weight.detach().double()
    if cross is None:
        return w
    h = damped(hessian, damp)
    shift = cross.double() - hessian.double()  # C + λI − (H + λI)
    return w + w @ torch.linalg.solve(h, shift.T).T
