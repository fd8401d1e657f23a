"""Synthetic attention-like chains (chains_lite.core.synthetic): stochastic, seeded, and the same
chain from its queries and keys."""
import math

import torch

from chains_lite.core.synthetic import attention_like, attention_qk


def test_attention_like_is_a_batch_of_seeded_stochastic_matrices():
    A = attention_like(3, 50, seed=4)
    assert A.shape == (3, 50, 50) and A.dtype == torch.float32 and (A > 0).all()
    torch.testing.assert_close(A.sum(-1), torch.ones(3, 50))
    assert torch.equal(A, attention_like(3, 50, seed=4))
    assert not torch.equal(A, attention_like(3, 50, seed=5))


def test_temperature_spreads_the_heads_from_flat_to_peaked():
    A = attention_like(4, 64, seed=0, temperature=(0.1, 8.0))
    entropy = -(A * A.log()).sum(-1).mean(-1)            # per head, mean row entropy
    assert (entropy.diff() < 0).all() and entropy[0] > 0.9 * math.log(64)


def test_qk_give_the_same_chain_through_an_independent_softmax():
    q, k = attention_qk(2, 30, d=16, seed=1)
    logits = q.double() @ k.double().mT / math.sqrt(16)
    A = logits.exp() / logits.exp().sum(-1, keepdim=True)
    torch.testing.assert_close(A.float(), attention_like(2, 30, d=16, seed=1), atol=1e-6, rtol=1e-5)
