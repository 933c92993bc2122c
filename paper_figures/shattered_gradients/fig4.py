"""Shattered gradients, Fig. 4 (Reconstruction, spec §7, §10): gradients shatter in convnets at initialisation.

For a minibatch of M = 256 images and each depth in {2, 4, 10, 24, 50}, feedforward convnets (top row) and resnets
with beta = 0.1 (bottom row): the per-example gradients g_m of the loss with respect to the first conv layer's
output (BN statistics of the batch held constant), their centred Gram matrix shown as |G| / mean diag G, with the
images reordered by k-means (k = 10) on the shallowest net's gradients and the same order for every depth of a
row. Beside them, against depth: the relative effective rank of the centred gradients (1 for white noise) and the
gradient-norm ratio ||mean g||^2 / mean ||g||^2 (1 for identical gradients, about 1/M for white noise).

    python paper_figures/shattered_gradients/fig4.py [--quick | --cifar PATH] [--out DIR] [--seed S] [--width C]
                                                      [--backend numpy|cupy]

By default the paper's depths and minibatch on scikit-learn's embedded digits (8x8 grey images), width 64 (our
choice); --cifar PATH: the same on CIFAR-10; --quick: digits at width 8. Each (family, depth) is cached under
DIR/.cache as soon as it is measured, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy  # noqa: E402

from nablax.architectures import convnet  # noqa: E402
from nablax.figures import FigureRecord, blas_threads, cached, figure_args, require_cifar, save_figure  # noqa: E402
from nablax.losses import SoftmaxCrossEntropy  # noqa: E402
from nablax.metrics.minibatch_gradients import (  # noqa: E402
    GRAD_TARGETS,
    effective_rank,
    gradient_norm_ratio,
    gram_image,
    kmeans_order,
    per_example_gradients,
    relative_effective_rank,
)

FAMILIES = {"feedforward": "conv-fnn", "resnet": "conv-resnet"}
DEPTHS = [2, 4, 10, 24, 50]


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--width", type=int, help="conv width (default: 8 quick, 64 otherwise)")
    p.add_argument("--batch", type=int, default=256, help="images in the minibatch (default 256)")
    p.add_argument("--depths", type=int, nargs="*", help=f"depths (default {DEPTHS})")
    p.add_argument("--beta", type=float, default=0.1, help="resnet branch scale (default 0.1)")
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.add_argument("--order", default="kmeans", choices=["kmeans", "label"],
                   help="image order: k-means on the shallowest net (default) or by true class label")
    p.add_argument("--grad-target", default="first_layer_activations", choices=GRAD_TARGETS,
                   help="which per-example gradient (spec §7; default first_layer_activations)")


def load_images(cifar: str | None, m: int, seed: int) -> tuple[numpy.ndarray, numpy.ndarray, str]:
    """M images (M, C, H, W) standardised per channel over the data set, their labels, and the source's name."""
    if cifar:
        from nablax.data import load_cifar10

        ds = load_cifar10(cifar, standardize=False)
        x, y, name = ds.x_train.reshape(-1, 3, 32, 32), ds.y_train, "CIFAR-10 (training set)"
    else:
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y, name = d.images[:, None].astype(float), d.target, "scikit-learn digits (8x8)"
    x = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / x.std(axis=(0, 2, 3), keepdims=True)
    idx = numpy.random.default_rng(seed).choice(len(y), m, replace=False)
    return x[idx], numpy.asarray(y[idx], dtype=numpy.int64), name


def measure(family: str, depth: int, x: numpy.ndarray, y: numpy.ndarray, s: dict, shallowest: bool) -> dict:
    """Gram image (unordered), effective ranks and the norm ratio of one net; the k-means order for the shallowest."""
    net = convnet(FAMILIES[family], depth, s["width"], x.shape[1:], 10, beta=s["beta"], seed=s["seed"],
                  dtype=s["dtype"], backend=s["backend"])
    g = per_example_gradients(net, net.backend.xp.asarray(x.astype(s["dtype"])), y, loss=SoftmaxCrossEntropy(),
                              target=s["grad_target"])
    out = {"gram": numpy.round(gram_image(g), 4), "erank": effective_rank(g),
           "relative_erank": relative_effective_rank(g, seed=s["seed"]), "norm_ratio": gradient_norm_ratio(g),
           "dim": g.shape[1]}
    if shallowest:
        by_label = numpy.argsort(y, kind="stable")
        out["order"] = kmeans_order(g, k=10, seed=s["seed"]) if s["order"] == "kmeans" else by_label
    return out


def main(argv: list[str] | None = None) -> None:
    args = figure_args(__doc__.split("\n\n")[0], argv, default_out="figures/shattered_gradients", data=True,
                       extra=options)
    require_cifar(args)
    with blas_threads(args.quick):
        run(args)


def run(args: argparse.Namespace) -> None:
    cifar = args.cifar
    depths = sorted(args.depths or DEPTHS)
    width = args.width or (8 if args.quick else 64)
    x, y, source = load_images(cifar, args.batch, args.seed)
    m = len(y)
    s = {"width": width, "beta": args.beta, "seed": args.seed, "dtype": args.dtype, "grad_target": args.grad_target,
         "order": args.order, "backend": args.backend}
    settings = {
        "data": source, "minibatch": m, "image_shape": list(x.shape[1:]), "depths": depths, "width": width,
        "beta": args.beta, "seed": args.seed, "dtype": args.dtype, "quick": args.quick, "scale": args.scale,
        "backend": args.backend, "cifar_supplied": cifar is not None,
        "preprocessing": "each channel standardised by its mean and std over the data set; M images drawn at random",
        "grad_target": args.grad_target, "loss_for_grad": "softmax cross-entropy with the true label",
        "bn_mode": "training-mode BN, batch statistics held constant", "gram": "centred, |G| / mean diag G",
        "order": "k-means (k=10, seed) on the shallowest net's centred gradients, shared by every depth of a row"
                 if args.order == "kmeans" else "by true class label",
        "erank": "Roy-Vetterli on singular values of the centred gradients / erank of a centred i.i.d. Gaussian "
                 "matrix of the same shape",
        "norm_ratio": "||mean g||^2 / mean ||g||^2 (uncentred)",
        "layout": "3x3 convs, stride 1, same padding, constant width; feedforward [conv-BN-ReLU] x (depth-1); resnet "
                  "stem conv + (depth-2)/2 pre-activation blocks x + beta conv(relu(BN(conv(relu(BN(x)))))), then "
                  "BN-ReLU; both: global average pool and a linear layer to 10 classes; He init, no biases, BN "
                  "without affine parameters",
        "depth_counting": "weight layers: main-path convs + the linear head (He et al. 2016); depth 2 is the same "
                          "net in both rows",
        "ours": "every item above except the depths, M = 256, beta = 0.1, k = 10 and the CIFAR-10 data is a project "
                "choice (spec §7 'Open'/'Reconstruction'); the paper's kernel sizes, widths, strides, pooling, "
                "loss and seeds are unknown" + ("" if cifar else "; on scikit-learn's digits, not CIFAR-10 (--cifar)"),
    }
    key = {k: settings[k] for k in ("data", "minibatch", "width", "beta", "seed", "dtype", "grad_target")}
    key["order"] = args.order
    results: dict[str, dict[int, dict]] = {}
    for family in FAMILIES:
        results[family] = {}
        for depth in depths:
            t0 = time.perf_counter()
            results[family][depth] = cached(args.out, {**key, "figure": "sg-fig4", "family": family, "depth": depth,
                                                       "shallowest": depth == depths[0]},
                                            lambda: measure(family, depth, x, y, s, depth == depths[0]))
            r = results[family][depth]
            print(f"{family:12s} depth {depth:3d}: relative erank {r['relative_erank']:.3f}  "
                  f"norm ratio {r['norm_ratio']:.4f}  ({time.perf_counter() - t0:.1f}s)", file=sys.stderr)

    fig, record = plot(results, settings)
    save_figure(fig, record, args.out, "fig4")


NORM_RATIO = r"$\|\bar g\|^2 \,/\, \overline{\|g\|^2}$"  # bar: the mean over the M images


def plot(results: dict[str, dict[int, dict]], settings: dict) -> tuple:
    """The Gram images (one colour bar for all: they share the scale 0..1), and the summaries against depth with
    one legend below them, off the lines."""
    depths, m = settings["depths"], settings["minibatch"]
    record = FigureRecord("shattered_gradients/fig4", settings)
    fig = plt.figure(figsize=(3.0 * len(depths) + 5.0, 7.2))
    grid = fig.add_gridspec(2, len(depths) + 2, width_ratios=[1] * len(depths) + [0.07, 1.6], wspace=0.3,
                            hspace=0.35)
    for row, (family, key_) in enumerate(zip(FAMILIES, "AB")):
        order = numpy.asarray(results[family][depths[0]]["order"])
        record.panel(key_, f"{family}: |G| / mean diag G of per-example gradients ({settings['grad_target']}), "
                     "images in k-means order; x = the image indices in display order, y = the displayed image as "
                     "colour levels round(255 clip(|G| / mean diag G, 0, 1))", "image", "image")
        for col, depth in enumerate(depths):
            img = numpy.asarray(results[family][depth]["gram"])[numpy.ix_(order, order)]
            ax = fig.add_subplot(grid[row, col])
            im = ax.imshow(img, cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{family}, {depth} layers", fontsize=9)
            record.add(key_, f"{depth}-layer", order, numpy.rint(255 * numpy.clip(img, 0.0, 1.0)).astype(int),
                       depth=depth)
    bar = fig.colorbar(im, cax=fig.add_subplot(grid[:, len(depths)]))
    bar.set_label(r"$|G|\,/\,\mathrm{mean\ diag}\,G$ (clipped at 1)", fontsize=9)
    summaries = [("C", "relative_erank", "relative effective rank", "relative effective rank (white noise = 1)", 1.0),
                 ("D", "norm_ratio", "gradient-norm ratio", NORM_RATIO, 1.0 / m)]
    for row, (key_, field, title, ylabel, white) in enumerate(summaries):
        ax = fig.add_subplot(grid[row, len(depths) + 1])
        ax.yaxis.tick_right()
        ax.yaxis.set_label_position("right")
        record.panel(key_, title, "depth", ylabel)
        for family in FAMILIES:
            vals = [results[family][d][field] for d in depths]
            extra_fields = {"erank": [results[family][d]["erank"] for d in depths]} if field == "relative_erank" else {}
            record.add(key_, family, depths, vals, **extra_fields)
            ax.plot(depths, vals, "o-", label=family)
        record.add(key_, "white noise", depths, [white] * len(depths))
        ax.plot(depths, [white] * len(depths), "k--", lw=1, label="white noise (C: 1, D: 1/M)")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(depths)
        ax.set_xticklabels([str(d) for d in depths])
        if field == "norm_ratio":
            ax.set_yscale("log")
        ax.set_xlabel("depth")
        ax.set_ylabel(ylabel, fontsize=9 if row else 8)
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    fig.suptitle(f"Gradients in convnets at initialisation ({settings['data']}, M = {m}, width {settings['width']})",
                 fontsize=10)
    return fig, record

if __name__ == "__main__":
    main()
