"""Per-item seeds and noise (chains_lite.core.seeding): a function of (seed, index), never of the batch."""
import numpy as np
import pytest
import torch

from chains_lite.core.seeding import item_noise, item_seed, seeded_noise


def test_item_seed_is_a_function_of_seed_and_index():
    seeds = {item_seed(s, i) for s in range(3) for i in range(200)}
    assert len(seeds) == 600 and all(0 <= x < 2 ** 63 for x in seeds)
    assert item_seed(5, 17) == item_seed(5, 17)
    # numpy's SeedSequence of the pair, its first 64-bit word halved into a non-negative int64
    assert item_seed(5, 17) == int(np.random.SeedSequence([5, 17]).generate_state(1, np.uint64)[0]) // 2
    for bad in ((-1, 0), (0, -3), (True, 0), (0, 1.5)):
        with pytest.raises(ValueError):
            item_seed(*bad)


def test_item_noise_does_not_depend_on_the_batch():
    a = item_noise((3, 4, 4), [0, 1, 2, 3], seed=5)
    b = item_noise((3, 4, 4), [2, 0], seed=5)
    torch.testing.assert_close(b, a[[2, 0]])
    assert not torch.equal(a[0], item_noise((3, 4, 4), [0], seed=6)[0])
    assert item_noise((2,), [], seed=0).shape == (0, 2)


def test_seeded_noise_is_torch_randn_from_each_seed():
    want = torch.randn(2, 3, generator=torch.Generator().manual_seed(item_seed(1, 7)))
    torch.testing.assert_close(seeded_noise((2, 3), [item_seed(1, 7)])[0], want, rtol=0, atol=0)
    torch.testing.assert_close(item_noise((2, 3), [7], seed=1)[0], want, rtol=0, atol=0)
