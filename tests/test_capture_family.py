"""What every capture family shares (chains_lite.capture.family): masks as additive biases, combined
biases, heads split from the hidden dim, against hand cases."""
import math

import pytest
import torch

from chains_lite.capture.family import additive_mask, combine_bias, split_heads


def test_boolean_masks_become_zero_or_minus_inf_in_either_convention():
    mask = torch.tensor([[True, False, True]])
    attends = additive_mask(mask, true_attends=True, dtype=torch.float32)
    blocks = additive_mask(mask, true_attends=False, dtype=torch.float32)
    assert attends.tolist() == [[0.0, -math.inf, 0.0]] and blocks.tolist() == [[-math.inf, 0.0, -math.inf]]
    assert additive_mask(None, True, torch.float32) is None
    torch.testing.assert_close(additive_mask(torch.tensor([[0.5, -2.0]], dtype=torch.float64), True, torch.float32),
                               torch.tensor([[0.5, -2.0]]))


def test_combined_bias_adds_the_old_mask_to_the_new_bias():
    new = torch.tensor([[1.0, 2.0, 3.0]])
    assert combine_bias(None, new, True) is new
    got = combine_bias(torch.tensor([[True, True, False]]), new, true_attends=True)
    assert got.tolist() == [[1.0, 2.0, -math.inf]]


@pytest.mark.parametrize("h", [1, 2, 4])
def test_split_heads_is_the_per_head_slice_of_the_hidden_dim(h):
    x = torch.randn(2, 5, 8)
    got = split_heads(x, h)                             # (B, H, N, D)
    d = 8 // h
    for i in range(h):
        torch.testing.assert_close(got[:, i], x[..., i * d:(i + 1) * d], rtol=0, atol=0)
