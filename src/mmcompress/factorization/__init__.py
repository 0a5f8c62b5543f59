"""Numerics of low-rank factorization: scaled SVD of weight matrices, Tucker-2 and CP of
convolution kernels, and each truncation's output error on calibration inputs."""

from .conv import ConvShape, cp_conv, tucker2_conv
from .svd import ScaledSVD, scaled_svd

__all__ = ["ConvShape", "ScaledSVD", "cp_conv", "scaled_svd", "tucker2_conv"]
