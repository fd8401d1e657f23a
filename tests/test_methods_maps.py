"""Global maps against the chain functions they are built from; localisation over layers and images."""
import pytest
import torch

from chains_lite import column_sum, tokenrank
from chains_lite.core.layout import TokenLayout
from chains_lite.methods.maps import center_token, global_map, mix, patch_map

LAYOUT = TokenLayout(cls_index=0, register_indices=(1,), grid=(2, 3), patch_start=2)


def test_global_maps_are_the_chain_quantities():
    A = torch.rand(3, 8, 8).softmax(-1)
    assert center_token(LAYOUT) == 2 + 1 * 3 + 1
    torch.testing.assert_close(global_map(A, "center_row", LAYOUT), A[:, 6])
    torch.testing.assert_close(global_map(A, "cls_row", LAYOUT), A[:, 0])
    torch.testing.assert_close(global_map(A, "column_sum", LAYOUT), column_sum(A))
    pi = global_map(A, "tokenrank", LAYOUT)
    torch.testing.assert_close(pi, tokenrank(A))
    grid = patch_map(A, "tokenrank", LAYOUT)
    assert grid.shape == (3, 2, 3) and torch.equal(grid[1, 1], pi[1, 5:8])
    torch.testing.assert_close(mix(A[None]), A.mean(0, keepdim=True)[0][None])
    with pytest.raises(ValueError, match="unknown method"):
        global_map(A, "rollout", LAYOUT)
    with pytest.raises(ValueError, match="CLS"):
        global_map(A, "cls_row", TokenLayout(None, (), (2, 4), 0))
    with pytest.raises(ValueError, match="heads"):
        mix(A[None], "max")


def test_explore_map_matches_its_parts():
    from chains_lite import bounce
    from chains_lite.methods.maps import explore_map
    A = torch.rand(3, 8, 8).softmax(-1)
    torch.testing.assert_close(explore_map(A, LAYOUT, 1, "cls_row"), A[1, 0, 2:].reshape(2, 3))
    torch.testing.assert_close(explore_map(A, LAYOUT, "uniform", "bounce_center", bounces=3),
                               bounce(A.mean(0), 6, 3)[2:].reshape(2, 3))
    with pytest.raises(ValueError, match="one image"):
        explore_map(A[None], LAYOUT)


