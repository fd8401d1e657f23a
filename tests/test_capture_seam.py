"""capture(): every family records the attention the model really used (checked against each
library's own non-fused attention weights), leaves outputs unchanged and removes its hooks;
add_logit_bias() really removes masked columns. Models are small random configs, no download."""
import warnings

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")

import chains_lite as cl  # noqa: E402
from chains_lite.capture import add_logit_bias, attention_layers, capture  # noqa: E402
from references import n_hooks, small_vit, timm_eager_attention


def test_layers_heads_device_options():
    m, x = small_vit(), torch.rand(2, 3, 32, 32)
    with torch.no_grad(), capture(m) as full:
        m(x)
    with torch.no_grad(), capture(m, layers=[-1, 0], heads="mean", device="cpu") as rec:
        m(x)
    assert rec.layers == [0, 2] and rec.attentions[0].shape == (2, 1, 17, 17)
    torch.testing.assert_close(rec.attentions[1], full.attentions[2].mean(1, keepdim=True))
    with torch.no_grad(), capture(m, layers=1) as one:
        m(x[:1])
        m(x[1:])  # two passes are concatenated along the batch
    torch.testing.assert_close(one.attentions[0], full.attentions[1])


def test_store_qk_gives_lazy_chains_equal_to_dense():
    m, x = small_vit(4), torch.rand(2, 3, 32, 32)
    with torch.no_grad(), capture(m) as dense:
        m(x)
    with torch.no_grad(), capture(m, store="qk") as qk:
        m(x)
    q, k, scale, mask = qk.qk[1]
    assert q.shape == (2, 4, 21, 8) and mask is None
    for L, A in zip(qk.lazy(), dense.attentions):
        torch.testing.assert_close(cl.tokenrank(L), cl.tokenrank(A), atol=1e-5, rtol=0)
        torch.testing.assert_close(cl.bounce(L, "uniform", 2), cl.bounce(A, "uniform", 2),
                                   atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="store"):
        qk.attentions


def test_hooks_removed_on_exception_and_bad_arguments():
    m = small_vit()
    with pytest.raises(RuntimeError, match="boom"):
        with capture(m):
            raise RuntimeError("boom")
    assert n_hooks(m.modules()) == 0
    for kwargs, msg in [(dict(layers=[3]), "out of range"), (dict(layers=[0, 0]), "duplicates"),
                        (dict(heads="max"), "heads"), (dict(store="logits"), "store"),
                        (dict(store="qk", heads="mean"), "probabilities")]:
        with pytest.raises(ValueError, match=msg):
            with capture(m, **kwargs):
                pass
    with capture(m) as rec:
        pass
    with pytest.raises(ValueError, match="nothing recorded"):
        rec.attentions
    with pytest.raises(ValueError, match="does not know"):
        with capture(nn.Linear(2, 2)):
            pass


def test_logit_bias_removes_a_column_in_chosen_layers_only():
    m, x = small_vit(4), torch.rand(2, 3, 32, 32)
    bias = torch.zeros(21)
    bias[[7, 12]] = -float("inf")
    with torch.no_grad():
        y0 = m(x)
        with add_logit_bias(m, bias, layers=[0, 1]), capture(m) as rec:
            y1 = m(x)
        with add_logit_bias(m, torch.zeros(21)):
            y2 = m(x)
    A = rec.attentions
    assert torch.all(A[0][..., [7, 12]] == 0) and torch.all(A[1][..., [7, 12]] == 0)
    assert torch.all(A[2][..., [7, 12]] > 0)
    torch.testing.assert_close(A[0].sum(-1), torch.ones(2, 4, 21))
    assert not torch.allclose(y0, y1)
    torch.testing.assert_close(y0, y2)
    # reference: the eager softmax with the column removed by hand
    ref = timm_eager_attention(m, x)[0]
    ref = ref.masked_fill(bias.isinf(), 0)
    torch.testing.assert_close(A[0], ref / ref.sum(-1, keepdim=True), atol=1e-6, rtol=1e-5)
    assert n_hooks(m.modules()) == 0


def test_capture_warns_when_a_bias_masks_every_key_of_a_row():
    m, x = small_vit(4), torch.rand(2, 3, 32, 32)
    with torch.no_grad(), add_logit_bias(m, torch.full((21, 21), -float("inf")), layers=[0]):
        with pytest.warns(RuntimeWarning, match="all -inf"), capture(m, layers=[0]) as rec:
            m(x)
    assert torch.isnan(rec.attentions[0]).all()   # the rows are NaN, and the warning said so
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # an ordinary mask stays silent
        bias = torch.zeros(21)
        bias[[7, 12]] = -float("inf")
        with torch.no_grad(), add_logit_bias(m, bias, layers=[0]), capture(m, layers=[0]):
            m(x)




def _compiled_whole(m):
    return torch.compile(m)


def _compiled_in_place(m):
    m.compile()
    return m


def _compiled_block(m):
    m.blocks[1].compile()
    return m


@pytest.mark.parametrize("compile_", [_compiled_whole, _compiled_in_place, _compiled_block])
def test_capture_and_logit_bias_refuse_a_compiled_model_up_front(compile_):
    m = compile_(small_vit(2))
    compiled = r"is compiled \(torch.compile or .compile\(\)\)"
    for enter in (lambda: capture(m), lambda: add_logit_bias(m, torch.zeros(21))):
        with pytest.raises(ValueError, match=compiled):
            with enter():
                pass
    with pytest.raises(ValueError, match=compiled):
        attention_layers(m)
    assert n_hooks(m.modules()) == 0


@pytest.mark.parametrize("reentrant", [False, True])
def test_capture_under_gradient_checkpointing_records_the_forward_once(reentrant):
    from torch.utils.checkpoint import checkpoint
    m, x = small_vit(), torch.rand(2, 3, 32, 32, requires_grad=True)
    with torch.no_grad():
        with capture(m) as plain:
            m(x)

    def forward(x):   # timm's set_grad_checkpointing, with either kind of checkpoint
        h = m._pos_embed(m.patch_embed(x))
        for block in m.blocks:
            h = checkpoint(block, h, use_reentrant=reentrant)
        return m.forward_head(m.norm(h))
    with capture(m) as rec:
        forward(x).sum().backward()
    assert x.grad is not None and rec.calls == 3          # 3 layers x 1 call, not the recomputation
    for a, b in zip(rec.attentions, plain.attentions):
        assert a.shape == (2, 4, 17, 17)
        torch.testing.assert_close(a, b)
