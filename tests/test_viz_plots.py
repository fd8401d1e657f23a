"""chains_lite.viz draws what it says: the right edges, the argmax bar, every eigenvalue."""

import matplotlib

matplotlib.use("Agg")  # headless: no display needed

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from matplotlib.patches import FancyArrowPatch

from chains_lite import viz
from chains_lite.viz import plots

# the paper's Fig. 2 toy chain
TOY = torch.tensor([
    [0.01, 0.04, 0.02, 0.85, 0.08],
    [0.82, 0.04, 0.07, 0.01, 0.06],
    [0.80, 0.07, 0.03, 0.05, 0.05],
    [0.06, 0.06, 0.03, 0.04, 0.81],
    [0.53, 0.03, 0.03, 0.06, 0.35],
])


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _random_chain(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(n, n, generator=g), -1)


# 0.05 and 0.35 are entries of the matrix: "above threshold" leaves them out
@pytest.mark.parametrize("threshold", [0.05, 0.3, 0.35, 0.5, 0.9])
def test_chain_graph_draws_one_arrow_per_edge_above_threshold(threshold):
    ax = viz.plot_chain_graph(TOY, threshold=threshold)
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == int((TOY > threshold).sum())


def test_chain_graph_draws_self_loops_and_scales_width_with_probability():
    # at 0.3 the toy chain has 6 edges, one of them the self-loop 4 -> 4 (0.35)
    ax = viz.plot_chain_graph(TOY, threshold=0.3)
    widths = sorted(p.get_linewidth() for p in ax.patches)
    expected = sorted((5 * TOY[TOY > 0.3]).tolist())
    assert len(widths) == 6
    # a strong edge is drawn thicker than a weak one, in proportion
    assert np.allclose(np.array(widths) / widths[-1], np.array(expected) / expected[-1], atol=1e-6)
    texts = {t.get_text() for t in ax.texts}
    assert {"0", "1", "2", "3", "4", "0.35", "0.85"} <= texts


@pytest.mark.parametrize("seed", range(3))
def test_distribution_highlights_the_argmax_bar(seed):
    v = torch.rand(7, generator=torch.Generator().manual_seed(seed))
    ax = viz.plot_distribution(v / v.sum())
    colors = [p.get_facecolor() for p in ax.patches]
    heights = [p.get_height() for p in ax.patches]
    assert len(colors) == 7 and np.allclose(heights, (v / v.sum()).numpy())
    k = int(v.argmax())
    assert colors[k] == to_rgba(plots.HIGHLIGHT)
    assert all(c == to_rgba(plots.BAR) for i, c in enumerate(colors) if i != k)


@pytest.mark.parametrize("v, highlight", [([0.1, 0.7, 0.2], False),    # switched off
                                          ([0.25, 0.25, 0.25, 0.25], True),  # a tie: no single argmax
                                          ([0.4, 0.1, 0.4, 0.1], True)])
def test_distribution_highlights_nothing_when_off_or_tied(v, highlight):
    ax = viz.plot_distribution(torch.tensor(v), highlight_max=highlight)
    assert {p.get_facecolor() for p in ax.patches} == {to_rgba(plots.BAR)}


@pytest.mark.parametrize("n, seed", [(5, 0), (9, 1), (16, 2)])
def test_spectrum_plots_every_eigenvalue_and_the_lambda2_circle(n, seed):
    A = TOY if n == 5 else _random_chain(n, seed)
    ax = viz.plot_spectrum(A)
    points = ax.collections[0].get_offsets()
    assert len(points) == n
    ref = np.linalg.eigvals(A.double().numpy())
    # every numpy eigenvalue is plotted (match each to its nearest point)
    got = np.asarray(points)[:, 0] + 1j * np.asarray(points)[:, 1]
    assert np.abs(ref[:, None] - got[None]).min(1).max() < 1e-6
    # the dashed circle's radius is the second-largest modulus, checked against numpy
    dashed = [p for p in ax.patches if p.get_linestyle() == "--"]
    assert len(dashed) == 1
    assert dashed[0].get_radius() == pytest.approx(np.sort(np.abs(ref))[-2], abs=1e-4)


def test_toy_spectrum_lambda2_is_a_complex_pair():
    ax = viz.plot_spectrum(TOY)
    xy = np.asarray(ax.collections[0].get_offsets())
    r = np.hypot(xy[:, 0], xy[:, 1])
    second = np.isclose(r, 0.6261, atol=1e-3)
    assert second.sum() == 2 and np.all(np.abs(xy[second, 1]) > 0.5)  # conjugate pair off the real axis


def test_matrix_writes_numbers_only_for_small_matrices():
    ax = viz.plot_matrix(TOY)
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"{x:.2f}" for x in TOY.flatten().tolist())
    assert len(viz.plot_matrix(_random_chain(30, 0)).texts) == 0


def test_bounce_sequence_starts_at_the_start_and_follows_the_chain():
    seq = viz.bounce_sequence(TOY, 4, steps=2)
    assert seq.shape == (3, 5)
    assert torch.equal(seq[0], torch.tensor([0.0, 0, 0, 0, 1]))
    by_hand = TOY[4] @ TOY  # e_4^T A A
    assert torch.allclose(seq[2], by_hand, atol=1e-6)
    assert viz.bounce_sequence(TOY, "uniform", 0).shape == (1, 5)
    with pytest.raises(ValueError):
        viz.bounce_sequence(TOY, 5, 2)


def test_bounce_sequence_plot_has_one_panel_per_vector_on_a_shared_axis():
    seq = viz.bounce_sequence(TOY, "uniform", steps=6)
    fig = viz.plot_bounce_sequence(seq, [f"n={k}" for k in range(7)], "from uniform")
    axes = fig.axes
    assert len(axes) == 7
    assert len({ax.get_ylim() for ax in axes}) == 1
    assert [ax.get_title() for ax in axes] == [f"n={k}" for k in range(7)]
    with pytest.raises(ValueError):
        viz.plot_bounce_sequence(seq, ["too few"], "x")


def test_plots_reject_a_batch_of_chains():
    with pytest.raises(ValueError, match=r"\(n, n\)"):
        viz.plot_chain_graph(torch.stack([TOY, TOY]))


def test_plot_maps_grid_and_explorer():
    import matplotlib.pyplot as plt
    from chains_lite.core.layout import TokenLayout
    fig = viz.plot_maps(torch.rand(2, 3, 4, 4), ["a", "b"], ["x", "y", "z"], images=torch.rand(2, 3, 8, 8))
    assert len(fig.axes) == 8 and fig.axes[1].get_title() == "x"
    plt.close(fig)
    with pytest.raises(ValueError, match="labels"):
        viz.plot_maps(torch.rand(2, 3, 4, 4), ["a"], ["x", "y", "z"])
    lay = TokenLayout(0, (), (2, 2), 1)
    atts = [torch.rand(2, 5, 5).softmax(-1) for _ in range(3)]
    e = viz.attention_explorer({"m": (atts, lay, torch.rand(3, 8, 8))})
    assert e.widget is not None and [c.description for c in e.widget.children[:6]] == [
        "model", "layer", "head", "method", "bounces", "alpha"]
    assert "chains-player" in e._repr_mimebundle_()["text/html"]
    plt.close("all")


def test_overlay_blends_the_upsampled_map_over_its_image():
    import matplotlib.pyplot as plt
    from chains_lite.viz.plots import overlay
    img = torch.rand(3, 8, 8)
    m = torch.zeros(2, 2)
    m[0, 1] = 3.0                                   # one hot patch: scaled to 1, the rest 0
    np.testing.assert_allclose(overlay(img, m, alpha=0.0), img.permute(1, 2, 0).numpy(), atol=1e-6)
    full = overlay(img, m, alpha=1.0, cmap="gray")  # gray colour map: colour = the scaled map
    # bilinear upsampling of a 2x2 grid to 8x8 (align_corners=False), by hand: the corner
    # pixels equal their patch, so the top-right pixel is 1 and the bottom-left 0
    assert full[0, 7] == pytest.approx([1, 1, 1], abs=1e-6)
    assert full[7, 0] == pytest.approx([0, 0, 0], abs=1e-6)
    half = overlay(img, m, alpha=0.5, cmap="gray")
    np.testing.assert_allclose(half, 0.5 * img.permute(1, 2, 0).numpy() + 0.5 * full, atol=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        overlay(img, m, alpha=1.5)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        overlay(img[0], m)
    fig = viz.plot_maps(m[None, None].expand(2, 3, 2, 2), ["a", "b"], ["x", "y", "z"],
                        images=img[None].expand(2, -1, -1, -1), alpha=0.5)
    drawn = fig.axes[1].get_images()[0].get_array()
    np.testing.assert_allclose(np.asarray(drawn), overlay(img, m, 0.5), atol=1e-6)
    plt.close(fig)
    with pytest.raises(ValueError, match="images"):
        viz.plot_maps(torch.rand(2, 3, 4, 4), ["a", "b"], ["x", "y", "z"], alpha=0.5)


def test_overlay_nearest_keeps_each_patch_one_block():
    """interpolation="nearest": each patch of the min-max scaled map covers its block of pixels,
    by hand; a constant map carries no shape (all 0)."""
    from chains_lite.viz.plots import overlay
    img = torch.zeros(3, 4, 4)
    m = torch.tensor([[1.0, 3.0], [5.0, 9.0]])
    got = overlay(img, m, alpha=1.0, cmap="gray", interpolation="nearest")[..., 0]
    want = torch.tensor([[0.0, 0.25], [0.5, 1.0]]).repeat_interleave(2, 0).repeat_interleave(2, 1)
    np.testing.assert_allclose(got, want.numpy(), atol=1 / 255)  # a colour map has 256 levels
    flat = overlay(img, torch.full((2, 2), 2.0), alpha=1.0, cmap="gray", interpolation="nearest")
    assert np.all(flat == 0)
    with pytest.raises(ValueError, match="unknown interpolation"):
        overlay(img, m, interpolation="cubic")


def test_plot_maps_draws_masks_as_regions_over_the_image():
    import matplotlib.pyplot as plt
    maps, images = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 16, 16)
    fig = viz.plot_maps(maps, ["a", "b"], ["x", "y", "mask"], images=images, alpha=0.6,
                        binary=[2], image_label="gen")
    axes = fig.axes
    assert len(axes) == 2 * 4 and axes[0].get_title() == "gen"
    # the image column and the overlays hold one image each; a mask panel the image and the mask
    assert [len(ax.images) for ax in axes[:4]] == [1, 1, 1, 2]
    assert len(axes[3].collections) > 0          # the mask's contour
    plt.close(fig)
    with pytest.raises(ValueError, match="images"):
        viz.plot_maps(maps, ["a", "b"], ["x", "y", "mask"], binary=[2])
    with pytest.raises(ValueError, match="one image"):
        viz.plot_maps(maps, ["a", "b"], ["x", "y", "z"], images=images[:1], alpha=0.5)
