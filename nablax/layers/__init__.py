"""Layers: each one a forward pass, vjp, jvp and exact Jacobian written by hand (see ``base.py``)."""

from .activations import SELU_ALPHA, SELU_LAMBDA, CReLU, Elementwise, Identity, PReLU, ReLU, SeLU, Sigmoid, Tanh
from .base import LAYER_KINDS, Cache, Layer, Mode
from .conv import AvgPool2d, Conv2d, Flatten, GlobalAvgPool, Unflatten
from .linear import Dense
from .norm import BatchNorm, LayerNorm
from .residual import Residual

__all__ = ["LAYER_KINDS", "Cache", "Layer", "Mode", "Dense", "Identity", "ReLU", "Tanh", "SeLU", "Sigmoid", "CReLU",
           "PReLU", "Elementwise", "BatchNorm", "LayerNorm", "Residual", "SELU_LAMBDA", "SELU_ALPHA",
           "Conv2d", "AvgPool2d", "GlobalAvgPool", "Flatten", "Unflatten"]
