"""chains_lite.viz.overlays: maps scaled and upsampled like a hand computation, one panel per map."""
import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from chains_lite.viz.overlays import overlay_grid, upsample  # noqa: E402


def test_upsample_scales_each_map_and_repeats_patches():
    m = torch.tensor([[[1.0, 3.0], [5.0, 9.0]], [[2.0, 2.0], [2.0, 2.0]]])
    up = upsample(m, (4, 4))
    assert up.shape == (2, 4, 4)
    want = torch.tensor([[0.0, 0.25], [0.5, 1.0]]).repeat_interleave(2, 0).repeat_interleave(2, 1)
    torch.testing.assert_close(up[0], want)
    assert torch.all(up[1] == 0)              # a constant map carries no shape


def test_overlay_grid_draws_every_map_over_its_image():
    import matplotlib.pyplot as plt
    maps, images = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 16, 16)
    fig = overlay_grid(maps, images, ["a", "b"], ["x", "y", "mask"], binary=[2], image_label="gen")
    axes = fig.axes
    assert len(axes) == 2 * 4
    # the image column holds one image; each map panel the image and the map over it
    assert len(axes[0].images) == 1 and all(len(ax.images) == 2 for i, ax in enumerate(axes) if i % 4)
    assert axes[1].images[1].get_alpha() == 0.6 and axes[0].get_title() == "gen"
    plt.close(fig)
    with pytest.raises(ValueError, match="labels"):
        overlay_grid(maps, images, ["a"], ["x", "y", "z"])
    with pytest.raises(ValueError, match="images"):
        overlay_grid(maps, images[:1], ["a", "b"], ["x", "y", "z"])
