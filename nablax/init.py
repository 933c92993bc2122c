"""Weight initialisations: Gaussian, orthogonal, looks-linear (CReLU mirrors), the orthogonal initial state of ReLU
nets, and conv kernels (delta- and flat-orthogonal, looks-linear). Every function takes an explicit
``numpy.random.Generator`` and returns NumPy arrays in the row convention of ``Dense`` (W has shape (d_in, d_out),
y = x W), unless it says otherwise.
"""

from __future__ import annotations

import numpy

INIT_SCHEMES = ("gaussian", "orthogonal", "looks_linear")


def as_rng(seed: int | numpy.random.Generator | None) -> numpy.random.Generator:
    """A Generator from a seed (or the Generator itself). Nothing here reads global random state."""
    return seed if isinstance(seed, numpy.random.Generator) else numpy.random.default_rng(seed)


def gaussian(d_in: int, d_out: int, rng: numpy.random.Generator, gain: float = 1.0) -> numpy.ndarray:
    """W (d_in, d_out) with i.i.d. N(0, gain / d_in) entries (fan-in variance; gain 2 for ReLU nets (He), else 1)."""
    return rng.standard_normal((d_in, d_out)) * numpy.sqrt(gain / d_in)


def orthonormal(m: int, n: int, rng: numpy.random.Generator, method: str = "qr") -> numpy.ndarray:
    """An m x n matrix with orthonormal rows (m <= n) or orthonormal columns (m >= n), Haar-distributed.

    ``method="qr"``: Q of the QR decomposition of a Gaussian matrix with the sign correction
    Q diag(sign(diag R)) (without it the distribution is not Haar). ``"svd"``: U or V^T of a thin SVD.
    """
    a = rng.standard_normal((m, n))
    if method == "svd":
        u, _, vt = numpy.linalg.svd(a, full_matrices=False)
        return u if u.shape == (m, n) else vt
    if method != "qr":
        raise ValueError(f"method must be 'qr' or 'svd', got {method!r}")
    tall = m >= n
    q, r = numpy.linalg.qr(a if tall else a.T)
    q = q * numpy.sign(numpy.where(numpy.diag(r) == 0, 1.0, numpy.diag(r)))
    return q if tall else q.T


def orthogonal(d_in: int, d_out: int, rng: numpy.random.Generator, gain: float = 1.0, method: str = "qr") -> numpy.ndarray:
    """W (d_in, d_out) whose map W^T: R^d_in -> R^d_out is a (partial) isometry times sqrt(gain)."""
    return numpy.sqrt(gain) * orthonormal(d_out, d_in, rng, method).T


def looks_linear(base: numpy.ndarray) -> numpy.ndarray:
    """Row-convention LL weight for a CReLU input: base (n, m) acting on z in R^n gives (2n, m) = [base; -base].
    Then ``CReLU(z) @ W_LL = relu(z) @ base - relu(-z) @ base = z @ base`` exactly."""
    return numpy.concatenate([base, -base], axis=0)


def orthogonal_state(d0: int, width: int, depth: int, d_out: int | None, rng: numpy.random.Generator,
                     method: str = "qr") -> list[numpy.ndarray]:
    """Weights of the orthogonal initial state (gradients-explode spec §7) of a ReLU MLP of even ``width`` = 2m.

    Column convention, as in the spec: first layer [V; -V] (2m x d0) with V a partial isometry; hidden layers
    [[U, -U], [-U, U]] with U orthogonal m x m; output [A, -A] with A (d_out x m) having orthonormal rows.
    With h = [h+; h-] and relu(a) - relu(-a) = a, the virtual vector v = h+ - h- evolves linearly
    (v <- U v), so the network computes x -> A U_D ... U_2 V x and every hidden map is orthogonal.
    Returns ``depth`` block weights and, if d_out is given, the output weight.
    """
    if width % 2:
        raise ValueError(f"the orthogonal initial state needs an even width (2m), got {width}")
    m = width // 2
    v = orthonormal(m, d0, rng, method)
    weights = [numpy.concatenate([v, -v], axis=0).T]
    for _ in range(depth - 1):
        u = orthonormal(m, m, rng, method)
        weights.append(numpy.block([[u, -u], [-u, u]]).T)
    if d_out is not None:
        a = orthonormal(d_out, m, rng, method)
        weights.append(numpy.concatenate([a, -a], axis=1).T)
    return weights


def delta_orthogonal(c_out: int, c_in: int, k: int, rng: numpy.random.Generator, gain: float = 1.0,
                     method: str = "qr") -> numpy.ndarray:
    """Conv kernel (c_out, c_in, k, k), k odd: centre tap sqrt(gain) H with H orthonormal rows/columns, other taps 0.
    With stride 1 and 'same' padding the convolution applies H at every pixel (norm-preserving if c_out >= c_in)."""
    if k % 2 == 0:
        raise ValueError(f"delta-orthogonal kernels need an odd size, got {k}")
    kernel = numpy.zeros((c_out, c_in, k, k))
    kernel[:, :, k // 2, k // 2] = numpy.sqrt(gain) * orthonormal(c_out, c_in, rng, method)
    return kernel


def flat_orthogonal(c_out: int, c_in: int, k: int, rng: numpy.random.Generator, gain: float = 1.0,
                    method: str = "qr") -> numpy.ndarray:
    """Conv kernel (c_out, c_in, k, k): the (c_out, c_in k k) reshape has orthonormal rows or columns (Saxe)."""
    return numpy.sqrt(gain) * orthonormal(c_out, c_in * k * k, rng, method).reshape(c_out, c_in, k, k)


def looks_linear_kernel(base: numpy.ndarray) -> numpy.ndarray:
    """Looks-linear conv kernel for a CReLU input (shattered-gradients spec §6.5): base K (c_out, c, kh, kw) acting
    on z with c channels gives K_LL = concat([K, -K], axis=in_channels), shape (c_out, 2c, kh, kw).

    CReLU(z) = [relu(z); relu(-z)] on channels, and convolution is linear with zero padding (relu(0) = 0), so
    ``K_LL * CReLU(z) = K * relu(z) - K * relu(-z) = K * z`` exactly, for any K, stride and padding.
    """
    if base.ndim != 4:
        raise ValueError(f"a conv kernel must be 4-D (c_out, c_in, kh, kw), got shape {base.shape}")
    return numpy.concatenate([base, -base], axis=1)
