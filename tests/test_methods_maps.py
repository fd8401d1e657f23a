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




def test_head_lambda2_matches_numpy_eigenvalues(tiny_vit):
    import numpy as np
    from chains_lite.capture import capture
    from chains_lite.methods.maps import head_lambda2
    vit = tiny_vit()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    lam = head_lambda2(vit, x)
    with torch.no_grad(), capture(vit) as rec:
        vit(x)
    assert lam.shape == (len(rec.attentions), 2, rec.attentions[0].shape[1])
    for l, b, h in [(0, 0, 0), (1, 1, 1)]:
        ev = np.sort(np.abs(np.linalg.eigvals(rec.attentions[l][b, h].double().numpy())))[::-1]
        assert lam[l, b, h].item() == pytest.approx(ev[1], abs=1e-3)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        head_lambda2(vit, x[0])
