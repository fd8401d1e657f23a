"""Pictures of attention chains: the graph, a distribution, a run of bounces, the spectrum, the matrix.

Small matplotlib + networkx helpers for the book's notebooks. Each takes one chain or
vector (a ``torch.Tensor`` or any array-like), draws on ``ax`` when given (a new
figure otherwise) and returns what it drew on, so callers can compose and test them.
"""
from __future__ import annotations

import functools
from typing import Sequence

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch
from matplotlib.path import Path
import networkx as nx
import numpy as np
import torch

from ..core.chain import DEFAULT_ALPHA, bounce, check_stochastic, lambda2
from ..core.numerics import start_vector
from ..methods.maps import EXPLORE_METHODS, explore_map, mix
from .html_player import Explorer, frame_player, png

BAR = "tab:blue"
HIGHLIGHT = "tab:orange"
EDGE = "tab:gray"


def _chain(A) -> np.ndarray:
    """One validated right-stochastic chain ``(n, n)`` as numpy, in the working dtype (float32/64)."""
    A = check_stochastic(A)
    if A.ndim != 2:
        raise ValueError(f"expected one chain of shape (n, n), got {tuple(A.shape)}")
    return A.detach().cpu().numpy()


def _vector(v, name: str = "v") -> np.ndarray:
    v = torch.as_tensor(v).detach().cpu().double()
    if v.ndim != 1 or v.numel() == 0:
        raise ValueError(f"{name} must be a non-empty vector of shape (n,), got {tuple(v.shape)}")
    return v.numpy()


def _axes(ax, figsize):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


# --------------------------------------------------------------------------- data for plots
def bounce_sequence(A, start="uniform", steps: int = 6, direction: str = "incoming") -> torch.Tensor:
    """The start vector and bounces 1..steps: ``(steps + 1, n)``, row k is ``v_k``.

    A: ``(n, n)`` right-stochastic. start: ``"uniform"``, an int (one-hot at that state) or a
    probability vector ``(n,)``. Row 0 is the start itself, so ``steps=0`` is allowed
    (``chains_lite.bounce`` returns only bounces 1..steps).
    """
    A = check_stochastic(A)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if isinstance(start, np.integer):
        start = int(start)
    v0 = start_vector(start, A)  # the same starts (and checks) as chains_lite.bounce
    if steps == 0:
        return v0[None]
    return torch.cat([v0[None], bounce(A, v0, steps, direction, return_all=True)])


# --------------------------------------------------------------------------- plots
def _self_loop(ax, p: np.ndarray, w: float, label: bool) -> None:
    """A loop i -> i on the outer side of node i at ``p`` (networkx hides short loops under the node)."""
    u = p / np.linalg.norm(p)  # outward, away from the circle's centre
    centre, r = p + 0.3 * u, 0.16
    # the arc skips the 100 degrees facing the node and ends in an arrow head at the node
    back = np.arctan2(-u[1], -u[0])
    t = back + np.radians(np.linspace(50, 310, 40))
    path = Path(centre + r * np.stack([np.cos(t), np.sin(t)], 1))
    ax.add_patch(FancyArrowPatch(path=path, arrowstyle="-|>", mutation_scale=16, lw=5 * w,
                                 color=EDGE, zorder=1))
    if label:
        x, y = centre + (r + 0.1) * u
        ax.text(x, y, f"{w:.2f}", ha="center", va="center", fontsize=9)


def plot_chain_graph(A, threshold: float = 0.3, ax=None, edge_labels: bool = True):
    """The chain as a directed graph: an edge i -> j for every ``A[i, j] > threshold``.

    A: ``(n, n)`` right-stochastic. Nodes are labelled "0".."n-1" on a circle; edge width is
    proportional to the probability, i -> j and j -> i are drawn as separate arcs, and a
    self-loop (``A[i, i] > threshold``) is drawn as a loop on its node. Weaker edges are left
    out, as in the paper's Fig. 2 (middle). Returns ``ax``; each edge is one patch in ``ax.patches``.
    """
    P = _chain(A)
    n = len(P)
    ax = _axes(ax, (4.2, 4.2))
    G = nx.DiGraph()
    G.add_nodes_from(range(n))
    G.add_weighted_edges_from((i, j, P[i, j]) for i in range(n) for j in range(n) if P[i, j] > threshold)
    # rotate the circle so that state 0 sits at the top and the states run clockwise
    pos = {i: (np.sin(2 * np.pi * i / n), np.cos(2 * np.pi * i / n)) for i in range(n)}
    node_size, arcs = 900, "arc3,rad=0.18"  # curved arcs keep i->j and j->i apart
    nx.draw_networkx_nodes(G, pos, ax=ax, node_size=node_size, node_color="white", edgecolors="black")
    nx.draw_networkx_labels(G, pos, labels={i: str(i) for i in range(n)}, ax=ax, font_size=13)
    edges = [(i, j, w) for i, j, w in G.edges(data="weight") if i != j]
    if edges:
        nx.draw_networkx_edges(G, pos, ax=ax, edgelist=[(i, j) for i, j, _ in edges],
                               width=[5 * w for _, _, w in edges], arrows=True, arrowstyle="-|>",
                               arrowsize=16, node_size=node_size, connectionstyle=arcs,
                               edge_color=EDGE)
        if edge_labels:
            nx.draw_networkx_edge_labels(G, pos, ax=ax, connectionstyle=arcs, font_size=9,
                                         edge_labels={(i, j): f"{w:.2f}" for i, j, w in edges},
                                         node_size=node_size)
    for i, _, w in nx.selfloop_edges(G, data="weight"):
        _self_loop(ax, np.array(pos[i]), w, edge_labels)
    ax.set_title(f"chain graph: edges with $A_{{ij}} > {threshold:g}$")
    ax.set_axis_off()
    ax.margins(0.15)
    return ax


def plot_distribution(v, ax=None, title: str = "distribution over states", highlight_max: bool = True,
                      annotate: bool | None = None):
    """Bar chart of a probability vector ``v`` ``(n,)``; the argmax bar in orange.

    A tie for the maximum (e.g. the uniform vector) highlights nothing. annotate writes each
    value above its bar (default: when n <= 10). Returns ``ax``; the bars are ``ax.patches``
    in state order.
    """
    p = _vector(v)
    n = len(p)
    ax = _axes(ax, (4, 2.8))
    bars = ax.bar(range(n), p, color=BAR)
    top = np.flatnonzero(np.isclose(p, p.max(), rtol=1e-6, atol=0))
    if highlight_max and len(top) == 1:
        bars[top[0]].set_color(HIGHLIGHT)
    if annotate is None:
        annotate = n <= 10
    if annotate:
        ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=1)
    if n <= 20:
        ax.set_xticks(range(n))
    ax.set_ylim(0, max(1e-9, p.max()) * 1.18)
    ax.set_xlabel("state")
    ax.set_ylabel("probability")
    ax.set_title(title)
    return ax


def plot_bounce_sequence(vectors, labels: Sequence[str], title: str = "bounces", axes=None):
    """Small multiples: one bar chart per vector, side by side on a shared y axis.

    vectors: ``(k, n)`` (e.g. from ``bounce_sequence``), labels: k panel titles. axes: an
    optional row of k matplotlib axes to draw into. The argmax of each panel is orange.
    Returns the figure.
    """
    V = torch.as_tensor(vectors).detach().cpu().double().numpy()
    if V.ndim != 2 or len(labels) != len(V):
        raise ValueError(f"need vectors (k, n) and k labels, got {V.shape} and {len(labels)} labels")
    k = len(V)
    if axes is None:
        _, axes = plt.subplots(1, k, figsize=(1.9 * k + 0.6, 2.5), sharey=True, squeeze=False)
        axes = axes[0]
    for i, (v, label) in enumerate(zip(V, labels)):
        plot_distribution(v, ax=axes[i], title=label, annotate=False)
        if i:
            axes[i].set_ylabel("")
    for ax in axes:  # a shared scale, so bars compare across panels
        ax.set_ylim(0, V.max() * 1.1)
    fig = axes[0].figure
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_spectrum(A, ax=None, label: str | None = None, color: str = "tab:blue",
                  title: str = "spectrum of the chain"):
    """Eigenvalues of one chain ``(n, n)`` on the complex plane, with the unit circle.

    The n points are ``numpy.linalg.eigvals(A)`` (the reference computation); the dashed
    circle has radius ``chains_lite.lambda2(A)``, the modulus of the second eigenvalue, which
    sets how fast the chain mixes (paper Sec. 4.4). Call twice on one ``ax`` with different
    ``label``/``color`` to compare chains. Returns ``ax``.
    """
    P = _chain(A).astype(np.float64)
    ev = np.linalg.eigvals(P)
    lam2 = float(lambda2(torch.from_numpy(P)))
    ax = _axes(ax, (4.2, 4.2))
    prefix = f"{label}: " if label else ""
    if not any(p.get_gid() == "unit circle" for p in ax.patches):  # once per ax when overlaying
        ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="black", lw=1, gid="unit circle"))
        ax.axhline(0, color="lightgray", lw=0.8, zorder=0)
        ax.axvline(0, color="lightgray", lw=0.8, zorder=0)
    ax.add_patch(plt.Circle((0, 0), lam2, fill=False, ls="--", color=color, lw=1.2,
                            label=f"{prefix}$|\\lambda_2|$ = {lam2:.4f} (chains_lite.lambda2)"))
    ax.scatter(ev.real, ev.imag, s=40, color=color, zorder=3, label=f"{prefix}eigenvalues (numpy)")
    ax.set_xlim(-1.15, 1.15)
    ax.set_ylim(-1.15, 1.15)
    ax.set_aspect("equal")
    ax.set_xlabel(r"Re $\lambda$")
    ax.set_ylabel(r"Im $\lambda$")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    return ax


def plot_matrix(A, ax=None, title: str = "attention matrix A", annotate: bool | None = None):
    """Heat map of a matrix ``(n, m)``; rows are "from" states, columns "to" states.

    annotate writes each entry in its cell (default: when n, m <= 12). The matrix need not be
    stochastic (e.g. the column-normalised ``A_l``). Returns ``ax``.
    """
    M = torch.as_tensor(A).detach().cpu().double().numpy()
    if M.ndim != 2:
        raise ValueError(f"expected a matrix of shape (n, m), got {M.shape}")
    ax = _axes(ax, (4.2, 3.6))
    im = ax.imshow(M, cmap="Blues", vmin=0, vmax=max(1e-9, M.max()))
    if annotate is None:
        annotate = max(M.shape) <= 12
    if annotate:
        for (i, j), x in np.ndenumerate(M):
            ax.text(j, i, f"{x:.2f}", ha="center", va="center", fontsize=9,
                    color="white" if x > 0.6 * M.max() else "black")
    if max(M.shape) <= 20:
        ax.set_xticks(range(M.shape[1]))
        ax.set_yticks(range(M.shape[0]))
    ax.set_xlabel("to state j (column)")
    ax.set_ylabel("from state i (row)")
    ax.set_title(title)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return ax


INTERPOLATIONS = ("bilinear", "nearest")


def _scaled_up(m: torch.Tensor, size, interpolation: str) -> torch.Tensor:
    """A map ``(h, w)`` min-max scaled to [0, 1] (a constant map becomes 0) and resized to
    ``size`` ``(H, W)``: ``"bilinear"`` smooths, ``"nearest"`` keeps each patch one block."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; choose from {INTERPOLATIONS}")
    m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)
    extra = {"align_corners": False} if interpolation == "bilinear" else {}
    return torch.nn.functional.interpolate(m[None, None], size=tuple(size), mode=interpolation,
                                           **extra)[0, 0].clamp(0, 1)


def overlay(image, m, alpha: float = 0.6, cmap: str = "inferno",
            interpolation: str = "bilinear") -> np.ndarray:
    """A map drawn over its image: ``(H, W, 3)`` RGB in [0, 1].

    image: ``(3, H, W)`` in [0, 1]; m: ``(h, w)`` map over the image's patch grid, min-max scaled,
    resized to ``(H, W)`` (``interpolation``: ``"bilinear"`` or ``"nearest"``, which keeps each
    patch one block of pixels) and coloured with ``cmap``. Each pixel is
    ``(1 - alpha) * image + alpha * colour``: ``alpha = 0`` gives the image, ``1`` the map alone.
    """
    img = torch.as_tensor(image).detach().float().cpu()
    m = torch.as_tensor(m).detach().float().cpu()
    if img.ndim != 3 or img.shape[0] != 3 or m.ndim != 2:
        raise ValueError(f"need an image (3, H, W) and a map (h, w), got {tuple(img.shape)} and {tuple(m.shape)}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colour = plt.get_cmap(cmap)(_scaled_up(m, img.shape[1:], interpolation).numpy())[..., :3]
    return (1 - alpha) * img.permute(1, 2, 0).clamp(0, 1).numpy() + alpha * colour


def plot_maps(maps, row_labels: Sequence[str], col_labels: Sequence[str], images=None,
              title: str = "", cmap: str = "inferno", cell: float = 1.6, alpha: float | None = None,
              interpolation: str = "bilinear", binary: Sequence[int] = (), image_label: str = "input"):
    """A grid of 2-D maps, each min-max scaled on its own (only the shape of a map matters).

    maps: ``(R, C, h, w)``; row_labels: R names, col_labels: C names. images: optional
    ``(R, 3, H, W)`` in [0, 1] shown in an extra first column (the input of each row), titled
    ``image_label``. alpha (needs ``images``): each map is drawn over its row's image with this
    opacity (:func:`overlay`, resized by ``interpolation``); None draws the maps alone.
    ``binary`` (needs ``images``): indices of columns holding masks (0/1), drawn over the image
    as a tinted region with a contour. Returns the figure.
    """
    M = torch.as_tensor(maps).detach().float().cpu()
    if M.ndim != 4 or len(row_labels) != M.shape[0] or len(col_labels) != M.shape[1]:
        raise ValueError(f"need maps (R, C, h, w) with R row and C column labels, got "
                         f"{tuple(M.shape)}, {len(row_labels)} and {len(col_labels)}")
    if (alpha is not None or binary) and images is None:
        raise ValueError("alpha and binary draw maps over their image: pass images (R, 3, H, W)")
    R, C = M.shape[:2]
    extra = images is not None
    if extra:
        X = torch.as_tensor(images).detach().float().cpu()
        if X.ndim != 4 or X.shape[1] != 3 or len(X) != R:
            raise ValueError(f"need one image (3, H, W) per row ({R}), got {tuple(X.shape)}")
    fig, axes = plt.subplots(R, C + extra, figsize=(cell * (C + extra), cell * R + 0.5), squeeze=False)
    for r in range(R):
        if extra:
            img = X[r].permute(1, 2, 0).clamp(0, 1).numpy()
            axes[r, 0].imshow(img)
        for c in range(C):
            ax, m = axes[r, c + extra], M[r, c]
            if c in binary:
                mask = (_scaled_up(m, X.shape[-2:], "nearest") > 0.5).float().numpy()
                ax.imshow(img)
                ax.imshow(mask, cmap="Greens", alpha=0.45 * mask, vmin=0, vmax=1)
                ax.contour(mask, levels=[0.5], colors="lime", linewidths=0.8)
            elif alpha is None:
                m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)
                ax.imshow(m.numpy(), cmap=cmap, vmin=0, vmax=1)
            else:
                ax.imshow(overlay(X[r], m, alpha, cmap, interpolation))
    return label_grid(fig, axes, row_labels, ([image_label] if extra else []) + list(col_labels), title)


def label_grid(fig, axes, row_labels: Sequence[str], col_labels: Sequence[str], title: str = ""):
    """Finish a grid of image panels ``axes`` ``(R, C)``: row names on the first column, column
    titles on the first row, no ticks, the figure's title. Returns ``fig``."""
    for r, label in enumerate(row_labels):
        axes[r, 0].set_ylabel(label, fontsize=9)
    for c, label in enumerate(col_labels):
        axes[0, c].set_title(label, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _ipywidgets(interactive: bool):
    """The ipywidgets module when a live widget is wanted and installed, else None."""
    if not interactive:
        return None
    try:
        import ipywidgets
    except ImportError:
        return None
    return ipywidgets


def bounce_explorer(A, max_steps: int = 10, start=4, steps: int = 2, interactive: bool = True):
    """Slide through 0..max_steps bounces of one chain ``(n, n)`` from a one-hot state or uniform.

    Returns an :class:`~chains_lite.viz.html_player.Explorer`: in Jupyter or Colab a live ipywidget
    (a slider for the number of bounces, a dropdown for the start), in the built book the same
    controls over the same figures drawn ahead of time. start, steps: the initial choice.
    """

    P = torch.as_tensor(_chain(A))
    n = P.shape[-1]
    starts = [("uniform", "uniform")] + [(f"state {i}", i) for i in range(n)]
    steps = min(steps, max_steps)

    def figure(steps, start):
        v = bounce_sequence(P, start, steps)[-1]  # v_steps; row 0 is the start itself
        where = "uniform" if start == "uniform" else f"state {start}"
        return plot_distribution(v, title=f"after {steps} bounce(s) from {where}").figure

    html = frame_player({"bounces": list(range(max_steps + 1)), "start": starts},
                        lambda bounces, start: [png(figure(bounces, start), dpi=60)],
                        value={"bounces": steps, "start": start})
    widget, w = None, _ipywidgets(interactive)
    if w is not None:
        def show(steps, start):
            figure(steps, start)
            plt.show()
        widget = w.interactive(
            show, steps=w.IntSlider(value=steps, min=0, max=max_steps, description="bounces"),
            start=w.Dropdown(options=starts, value=start, description="start"))
    return Explorer(widget, html)


def attention_explorer(views: dict, interactive: bool = True):
    """Pick model / layer / head / method / bounces / alpha and see the map over the image, next to it.

    views: ``{model name: (attentions, layout, image)}`` with ``attentions`` a list over layers
    of one image's ``(H, n, n)`` attention, its :class:`~chains_lite.core.layout.TokenLayout` and the
    image ``(3, H, W)`` in [0, 1]. Returns an :class:`~chains_lite.viz.html_player.Explorer`: when
    ``interactive`` and ipywidgets is available, the live widget for Jupyter and Colab; always a
    static player for the built book over every model, layer, head mixture (uniform, lambda2) and
    method, with 2 bounces for ``bounce_center`` and the default alpha for TokenRank.
    """

    def head_of(head, H):
        return int(head) if head.isdigit() and int(head) < H else ("lambda2" if head == "lambda2" else "uniform")

    def describe(layer, h, method, bounces, alpha):
        what = f"{method}" + (f", n={bounces}" if method == "bounce_center" else "")
        what += f", alpha={alpha:.2f}" if method == "tokenrank" else ""
        return f"layer {layer}, head {h}: {what}"

    def draw(model, layer, head, method, bounces, alpha):
        atts, layout, image = views[model]
        layer = min(layer, len(atts) - 1)
        h = head_of(head, atts[layer].shape[0])
        m = explore_map(atts[layer], layout, h, method, bounces, alpha)
        fig, axes = plt.subplots(1, 2, figsize=(6, 3))
        axes[0].imshow(torch.as_tensor(image).permute(1, 2, 0).cpu().clamp(0, 1).numpy())
        axes[1].imshow(overlay(image, m))
        axes[0].set_title(model, fontsize=9)
        axes[1].set_title(describe(layer, h, method, bounces, alpha), fontsize=9)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        plt.show()

    @functools.lru_cache(maxsize=None)
    def mixed(model, layer, head):  # once per layer and mixture, not once per method
        return mix(views[model][0][layer], head)[None]

    def frame(model, layer, head, method):
        atts, layout, image = views[model]
        layer = min(layer, len(atts) - 1)
        m = explore_map(mixed(model, layer, head), layout, 0, method, 2, DEFAULT_ALPHA)
        return [png(image), png(overlay(image, m)),
                f"{model} | {describe(layer, head, method, 2, DEFAULT_ALPHA)}"]

    first = next(iter(views))
    n_layers = max(len(v[0]) for v in views.values())
    n_heads = max(v[0][0].shape[0] for v in views.values())
    html = frame_player({"model": list(views), "layer": list(range(n_layers)),
                         "head": ["uniform", "lambda2"], "method": list(EXPLORE_METHODS)},
                        frame, value={"layer": n_layers - 1, "method": "tokenrank"}, width=192)
    widget, w = None, _ipywidgets(interactive)
    if w is not None:
        widget = w.interactive(draw, **dict(
            model=w.Dropdown(options=list(views), value=first),
            layer=w.IntSlider(value=n_layers - 1, min=0, max=n_layers - 1),
            head=w.Dropdown(options=["uniform", "lambda2"] + [str(i) for i in range(n_heads)],
                            value="uniform"),
            method=w.Dropdown(options=list(EXPLORE_METHODS), value="tokenrank"),
            bounces=w.IntSlider(value=2, min=1, max=20),
            alpha=w.FloatSlider(value=DEFAULT_ALPHA, min=0.5, max=1.0, step=0.01)))
    return Explorer(widget, html)
