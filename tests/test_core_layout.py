"""Token layouts and chains without CLS (chains_lite.core.layout) against hand cases and the softmax."""

import pytest
import torch

timm = pytest.importorskip("timm")

import chains_lite as cl  # noqa: E402
from chains_lite.capture import capture  # noqa: E402
from chains_lite.core.layout import TokenLayout  # noqa: E402
from references import small_vit


def test_center_token_is_the_middle_patch():
    assert TokenLayout(0, (1,), (2, 3), 2).center_token == 2 + 1 * 3 + 1
    assert TokenLayout(None, (), (4, 4), 0).center_token == 2 * 4 + 2
    with pytest.raises(ValueError, match="no patch grid"):
        TokenLayout(0, (), None, 1).center_token


def test_chain_without_cls_is_the_softmax_over_the_other_logits():
    """Dropping CLS (or CLS and registers) from the probabilities and renormalising, or from q and
    k, equals the softmax of the logits with those rows and columns removed (computed in float64)."""
    from chains_lite.core.layout import chain_without
    g = torch.Generator().manual_seed(0)
    layout = TokenLayout(0, (1, 2, 3, 4), (4, 4), 5)                 # CLS, 4 registers, 4 x 4 patches
    q, k = torch.randn(2, 3, 21, 8, generator=g), torch.randn(2, 3, 21, 8, generator=g)
    logits = (q.double() @ k.double().mT) / 8 ** 0.5
    logits[..., 0] += 4.0                                             # CLS as a sink
    A = logits.softmax(-1).float()
    for tokens, first in (("cls", 1), ("special", 5)):
        want = logits[..., first:, first:].softmax(-1)
        dense, lay = chain_without(A, layout, tokens)
        torch.testing.assert_close(dense.double(), want, atol=1e-6, rtol=1e-5)
        assert lay.grid == (4, 4) and lay.cls_index is None and lay.patch_start == 5 - first
        assert lay.register_indices == ((0, 1, 2, 3) if tokens == "cls" else ())
        assert lay.to_grid(dense[..., 0, :]).shape == (2, 3, 4, 4)
    # from q and k: the lazy chain of the kept tokens' queries and keys
    got, _ = chain_without(cl.LazyAttention(q.double(), k.double()), layout, "cls")
    torch.testing.assert_close(got.dense(), (q.double() @ k.double().mT / 8 ** 0.5)[..., 1:, 1:].softmax(-1))
    # "special" keeps the patch tokens only: TokenLayout.patch_attention says the same
    torch.testing.assert_close(chain_without(A, layout, "special")[0], layout.patch_attention(A))
    with pytest.raises(ValueError, match="tokens must be"):
        chain_without(A, layout, "registers")
    with pytest.raises(ValueError, match="no CLS"):
        chain_without(A[..., 1:, 1:], TokenLayout(None, (0, 1, 2, 3), (4, 4), 4), "cls")


def test_chain_without_cls_of_a_captured_vit_agrees_between_probs_and_qk():
    from chains_lite.core.layout import chain_without
    m, x = small_vit(reg_tokens=4), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), capture(m, layers=[2]) as probs, capture(m, layers=[2], store="qk") as qk:
        m(x)
    assert probs.layout.register_indices == (1, 2, 3, 4)
    dense, lay = chain_without(probs.attentions[0], probs.layout)
    lazy, lay_q = chain_without(qk.lazy()[0], qk.layout)
    assert lay == lay_q == TokenLayout(None, (0, 1, 2, 3), (4, 4), 4)
    torch.testing.assert_close(lazy.dense(), dense, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cl.tokenrank(lazy), cl.tokenrank(dense), atol=1e-5, rtol=1e-4)
