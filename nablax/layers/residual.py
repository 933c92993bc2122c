"""The residual block."""

from __future__ import annotations

from typing import Any

from ..backend import array_module
from .base import (Array, Cache, Layer, Mode, backward_chain, block_diagonal, forward_chain, jacobian_chain, jvp_chain,
                   lambda_split_chain, param_jvp_chain, vjp_chain)
from .linear import Dense


class Residual(Layer):
    """A residual block: a skip path plus a scaled branch.

    forward   y = s(x) + beta * F(x)        F = the branch (a sequence of layers), s = identity or a Dense projection
    vjp       dx = J_s^T dy + beta * J_F^T dy
    jvp       dy = J_s dx + beta * J_F dx
    jacobian  J_s + beta * J_F              per sample (B, d, d); batch-level (B, d, B, d) when the branch couples samples
    grads     the branch's gradients scaled by beta, under ``branch.<j>.<name>``; the projection's under ``skip.<name>``
    λ-split   G_in[λ] = S(G)[λ] + beta * F(G)[λ]  S, F the λ-splits through skip and branch (``lambda_split_step``);
              (n, B, d) -> (n', B, d); an identity skip keeps λ (it is part of the initial function)

    ``beta`` is the branch scale of the shattered-gradients paper (beta-rescaling); 1 is the plain ResNet.
    """

    kind = "residual"

    def __init__(self, branch: list[Layer], skip: Dense | None = None, beta: float = 1.0) -> None:
        if not branch:
            raise ValueError("Residual needs a non-empty branch")
        self.branch, self.skip, self.beta = list(branch), skip, float(beta)

    @property
    def n_linear(self) -> int:  # type: ignore[override]
        return sum(layer.n_linear for _, layer, _, _ in self.children())

    def children(self, cache: Cache | None = None) -> list[tuple[str, Layer, Array, Cache]]:
        """The projection (``skip``, if any), then the branch's layers (``branch.<j>``), with inputs and caches."""
        xs, cs = ([None] * len(self.branch),) * 2 if cache is None else (cache.values, cache.caches)
        inner = [(f"branch.{j}", layer, x, c) for j, (layer, x, c) in enumerate(zip(self.branch, xs, cs))]
        skip = [] if self.skip is None else [("skip", self.skip, xs[0], cache and cache.skip)]
        return skip + inner

    def _collect(self, attr: str) -> dict[str, Array]:
        """Inner arrays by path: the branch's, then the projection's (the order of saved files and checkpoints)."""
        inner = sorted(self.children(), key=lambda child: child[0] == "skip")
        return {f"{name}.{k}": v for name, layer, _, _ in inner for k, v in getattr(layer, attr).items()}

    @property
    def params(self) -> dict[str, Array]:
        return self._collect("params")

    @property
    def state(self) -> dict[str, Array]:
        return self._collect("state")

    def config(self) -> dict[str, Any]:
        return {"beta": self.beta}

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = in_shape
        for layer in self.branch:
            shape = layer.out_shape(shape)
        return shape

    def forward(self, x: Array, mode: Mode = Mode()) -> tuple[Array, Cache]:
        values, caches = forward_chain(self.branch, x, mode)
        s, skip_cache = (x, None) if self.skip is None else self.skip.forward(x, mode)
        if s.shape != values[-1].shape:
            raise ValueError(f"Residual: skip output {s.shape} and branch output {values[-1].shape} differ")
        return s + self.beta * values[-1], Cache(values=values, caches=caches, skip=skip_cache,
                                                   coupled=any(c.coupled for c in caches))

    def branch_output(self, cache: Cache) -> Array:
        """The branch's part of the output, beta * F(x) (the skip's part is the output minus it)."""
        return self.beta * cache.values[-1]

    def vjp_parts(self, cache: Cache, dy: Array) -> tuple[Array, Array]:
        """The skip and branch parts of the pullback, (J_s^T dy, beta * J_F^T dy); ``vjp`` is their sum."""
        skip = dy if self.skip is None else self.skip.vjp(cache.skip, dy)
        return skip, self.beta * vjp_chain(self.branch, cache.caches, dy)

    def vjp(self, cache: Cache, dy: Array) -> Array:
        skip, branch = self.vjp_parts(cache, dy)
        return skip + branch

    def jvp(self, cache: Cache, dx: Array) -> Array:
        skip = dx if self.skip is None else self.skip.jvp(cache.skip, dx)
        return skip + self.beta * jvp_chain(self.branch, cache.caches, dx)

    def jacobian(self, cache: Cache) -> Array:
        x = cache.values[0]
        if self.skip is None:
            xp, d = array_module(x), x[0].size
            skip = xp.broadcast_to(xp.eye(d, dtype=x.dtype), (x.shape[0], d, d))
        else:
            skip = self.skip.jacobian(cache.skip)
        branch = jacobian_chain(self.branch, cache.caches)
        if cache.coupled:
            skip = block_diagonal(skip)
        return skip + self.beta * branch

    def backward(self, cache: Cache, dy: Array) -> tuple[Array, dict[str, Array]]:
        dx_branch, branch_grads = backward_chain(self.branch, cache.caches, dy)
        grads = {f"branch.{j}.{k}": self.beta * v for j, g in enumerate(branch_grads) for k, v in g.items()}
        dx_skip, g = (dy, {}) if self.skip is None else self.skip.backward(cache.skip, dy)
        grads.update({f"skip.{k}": v for k, v in g.items()})
        return dx_skip + self.beta * dx_branch, grads

    def param_grads(self, cache: Cache, dy: Array) -> dict[str, Array]:
        return self.backward(cache, dy)[1]

    def param_jvp(self, cache: Cache, dparams: dict[str, Array]) -> Array:
        per_layer = [{k[len(f"branch.{j}."):]: v for k, v in dparams.items() if k.startswith(f"branch.{j}.")}
                     for j in range(len(self.branch))]
        t = param_jvp_chain(self.branch, cache.caches, per_layer)
        t = 0.0 if t is None else self.beta * t
        skip_dp = {k[len("skip."):]: v for k, v in dparams.items() if k.startswith("skip.")}
        if self.skip is not None and skip_dp:
            t = t + self.skip.param_jvp(cache.skip, skip_dp)
        return t

    def lambda_split_step(self, cache: Cache, x: Array, G: Array, prefix: str, split: Any) -> Array:
        branch = lambda_split_chain(self.branch, cache.values, cache.caches, G if self.beta == 1.0 else self.beta * G,
                                    prefix + "branch.", split)
        skip = G if self.skip is None else self.skip.lambda_split_step(cache.skip, x, G, prefix + "skip.", split)
        return split.padded_sum(skip, branch)

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.branch)
        skip = "identity" if self.skip is None else repr(self.skip)
        return f"Residual(skip={skip}, beta={self.beta}, branch=[{inner}])"
