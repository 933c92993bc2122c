"""Optimisers as plain update rules on named parameter arrays (updated in place).

    SGD       v <- mu v + g;              p <- p - lr v              (mu = 0: plain SGD)
    RMSprop   s <- rho s + (1 - rho) g^2; p <- p - lr g / (sqrt(s) + eps)
    Adam      m <- b1 m + (1 - b1) g;     s <- b2 s + (1 - b2) g^2
              p <- p - lr (m / (1 - b1^t)) / (sqrt(s / (1 - b2^t)) + eps)

Each rule's ``direction`` is its step before the learning rate, and its ``linearised_update`` splits the step it
has just taken, Σ_λ U[λ], when the gradient is a sum of parts g = Σ_λ Γ[λ] (the λ-split of effective depth, spec
§5). Exact for SGD with or without momentum (the rule is linear in g); for RMSprop and Adam linear in g with the
preconditioner sqrt(s) held at its value after the step. ``step`` applies p -= lr * direction (in one pass through
``kernels.subtract_scaled`` where Numba takes p: no temporary for lr * direction). ``state_dict()`` /
``load_state_dict()`` copy the buffers out and in so training can be checkpointed and resumed exactly.
"""

from __future__ import annotations

from typing import Any

from . import kernels
from .backend import array_module


def _decay_add(buf: Any, decay: float, x: Any) -> Any:
    """buf <- decay buf + x in place (a momentum or a running average); returns buf."""
    buf *= decay
    buf += x
    return buf


class Optimizer:
    name = ""

    def __init__(self, lr: float) -> None:
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        self.lr = float(lr)
        self.t = 0
        self.buffers: dict[str, dict[str, Any]] = {}

    def _buf(self, kind: str, key: str, like: Any) -> Any:
        d = self.buffers.setdefault(kind, {})
        if key not in d:
            d[key] = array_module(like).zeros_like(like)
        return d[key]

    def step(self, params: dict[str, Any], grads: dict[str, Any]) -> None:
        self.t += 1
        for k, p in params.items():
            if k in grads:
                u = self.direction(k, grads[k])
                if kernels.subtract_scaled(p, u, self.lr) is None:
                    p -= p.dtype.type(self.lr) * u  # the update (the kernel computes it bit for bit)

    def direction(self, key: str, g: Any) -> Any:
        """The update of parameter ``key`` for gradient g, before the learning rate (g itself may be returned)."""
        raise NotImplementedError

    def linearised_update(self, key: str, parts: Any, buffers: dict[str, Any]) -> Any:
        """The parts U[λ] of the step just taken for parameter ``key``, shape (D, *param shape), given the gradient's
        parts Γ[λ] ``parts`` of that shape (the parameter moved by -Σ_λ U[λ]). ``buffers`` holds the caller's
        per-λ copies of the rule's linear buffers (momentum, Adam's first moment), updated here."""
        raise NotImplementedError(f"{type(self).__name__} does not state its linearised update")

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "t": self.t,
                "buffers": {k: {n: a.copy() for n, a in v.items()} for k, v in self.buffers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr, self.t = float(state["lr"]), int(state["t"])
        self.buffers = {k: {n: a.copy() for n, a in v.items()} for k, v in state["buffers"].items()}


class SGD(Optimizer):
    name = "sgd"

    def __init__(self, lr: float, momentum: float = 0.0) -> None:
        super().__init__(lr)
        self.momentum = float(momentum)

    def direction(self, key: str, g: Any) -> Any:
        if self.momentum == 0.0:
            return g
        return _decay_add(self._buf("velocity", key, g), self.momentum, g)

    def linearised_update(self, key: str, parts: Any, buffers: dict[str, Any]) -> Any:
        """U[λ] = lr V[λ] with V[λ] <- mu V[λ] + Γ[λ] (plain SGD: lr Γ[λ])."""
        if self.momentum == 0.0:
            return self.lr * parts
        v = buffers.setdefault(key, array_module(parts).zeros_like(parts))
        return self.lr * _decay_add(v, self.momentum, parts)


class RMSprop(Optimizer):
    name = "rmsprop"

    def __init__(self, lr: float, rho: float = 0.9, eps: float = 1e-8) -> None:
        super().__init__(lr)
        self.rho, self.eps = float(rho), float(eps)

    def direction(self, key: str, g: Any) -> Any:
        s = _decay_add(self._buf("square", key, g), self.rho, (1 - self.rho) * g * g)
        return g / (array_module(g).sqrt(s) + self.eps)

    def linearised_update(self, key: str, parts: Any, buffers: dict[str, Any]) -> Any:
        """U[λ] = lr Γ[λ] / (sqrt(s) + eps), s the squared-gradient average after the step."""
        s = self.buffers["square"][key]
        return self.lr * parts / (array_module(parts).sqrt(s) + self.eps)


class Adam(Optimizer):
    name = "adam"

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        super().__init__(lr)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def direction(self, key: str, g: Any) -> Any:
        m = _decay_add(self._buf("mean", key, g), self.beta1, (1 - self.beta1) * g)
        s = _decay_add(self._buf("square", key, g), self.beta2, (1 - self.beta2) * g * g)
        m_hat = m / (1 - self.beta1 ** self.t)
        s_hat = s / (1 - self.beta2 ** self.t)
        return m_hat / (array_module(g).sqrt(s_hat) + self.eps)

    def linearised_update(self, key: str, parts: Any, buffers: dict[str, Any]) -> Any:
        """U[λ] = lr (M[λ] / (1 - b1^t)) / (sqrt(s / (1 - b2^t)) + eps), M[λ] <- b1 M[λ] + (1 - b1) Γ[λ]."""
        xp = array_module(parts)
        m = _decay_add(buffers.setdefault(key, xp.zeros_like(parts)), self.beta1, (1 - self.beta1) * parts)
        s_hat = self.buffers["square"][key] / (1 - self.beta2 ** self.t)
        return self.lr * (m / (1 - self.beta1 ** self.t)) / (xp.sqrt(s_hat) + self.eps)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "rmsprop": RMSprop}


def make_optimizer(name: str, lr: float, **kw: Any) -> Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](lr, **kw)
