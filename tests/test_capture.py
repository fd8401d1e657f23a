"""capture(): every family records the attention the model really used (checked against each
library's own non-fused attention weights), leaves outputs unchanged and removes its hooks;
add_logit_bias() really removes masked columns. Models are small random configs, no download."""
import warnings

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")

import chains_lite as cl  # noqa: E402
from chains_lite.capture import (TokenLayout, add_logit_bias, capture, drop_special,  # noqa: E402
                                 family_of)


def small_vit(reg_tokens=0, seed=0):
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(seed)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4,
                             num_classes=5, reg_tokens=reg_tokens).eval()


def timm_eager_attention(model, x):
    """Reference: timm's own non-fused path, read at its attention-dropout input (= softmax)."""
    got, handles = [], []
    for b in model.blocks:
        b.attn.fused_attn = False
        handles.append(b.attn.attn_drop.register_forward_hook(lambda m, i, o: got.append(o)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for b, h in zip(model.blocks, handles):
            h.remove()
            b.attn.fused_attn = True
    return got


def n_hooks(modules):
    return sum(len(m._forward_pre_hooks) for m in modules)


@pytest.mark.parametrize("reg_tokens", [0, 4])
def test_timm_capture_matches_eager_attention_and_keeps_outputs(reg_tokens):
    m, x = small_vit(reg_tokens), torch.rand(3, 3, 32, 32)
    for b in m.blocks:
        b.attn.fused_attn = True  # capture must see through the fused kernel
    with torch.no_grad():
        y0 = m(x)
        with capture(m) as rec:
            y1 = m(x)
    assert torch.equal(y0, y1)
    n = 1 + reg_tokens + 16
    ref = timm_eager_attention(m, x)
    assert len(rec.attentions) == 3
    for a, r in zip(rec.attentions, ref):
        assert a.shape == (3, 4, n, n) and a.dtype == torch.float32
        torch.testing.assert_close(a.sum(-1), torch.ones(3, 4, n))
        torch.testing.assert_close(a, r, atol=1e-6, rtol=1e-5)
    assert n_hooks(m.blocks.modules()) == 0


def test_timm_layout_knows_cls_registers_and_grid():
    lay = family_of(small_vit(4)).layout(small_vit(4))
    assert lay == TokenLayout(cls_index=0, register_indices=(1, 2, 3, 4), grid=(4, 4), patch_start=5)
    assert lay.special_indices == (0, 1, 2, 3, 4)
    v = torch.arange(21.0).expand(2, 21)
    assert torch.equal(lay.to_grid(v)[0], torch.arange(5.0, 21.0).reshape(4, 4))
    assert torch.equal(drop_special(v, lay, renormalize=False), v[:, 5:])
    torch.testing.assert_close(drop_special(v, lay).sum(-1), torch.ones(2))
    A = torch.rand(2, 21, 21).softmax(-1)
    P = lay.patch_attention(A)
    assert P.shape == (2, 16, 16)
    torch.testing.assert_close(P.sum(-1), torch.ones(2, 16))
    torch.testing.assert_close(P[0, 3] * A[0, 8, 5:].sum(), A[0, 8, 5:])
    with pytest.raises(ValueError, match="tokens"):
        lay.patches(torch.rand(10))
    no_cls = small_vit()
    assert family_of(no_cls).layout(no_cls).register_indices == ()


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


def test_open_clip_capture_matches_torch_attention_weights():
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    tower = open_clip.transformer.VisionTransformer(image_size=32, patch_size=8, width=32, layers=2,
                                                    heads=4, mlp_ratio=2.0, output_dim=16).eval()
    x = torch.rand(2, 3, 32, 32)
    ref = []

    def weights(mha, args, kwargs, out):   # torch's own per-head probabilities for the same input
        ref.append(mha.forward(*args, need_weights=True, average_attn_weights=False)[1])

    with torch.no_grad():
        y0 = tower(x)
        hs = [b.attn.register_forward_hook(weights, with_kwargs=True)
              for b in tower.transformer.resblocks]
        tower(x)
        for h in hs:
            h.remove()
        with capture(tower) as rec:
            y1 = tower(x)
    assert torch.equal(y0, y1)
    assert rec.layout == TokenLayout(0, (), (4, 4), 1)
    for a, r in zip(rec.attentions, ref):
        assert a.shape == (2, 4, 17, 17)
        torch.testing.assert_close(a, r, atol=1e-6, rtol=1e-5)
    bias = torch.zeros(17)
    bias[3] = -float("inf")
    with torch.no_grad(), add_logit_bias(tower, bias, layers=0), capture(tower, layers=0) as rec:
        tower(x)
    assert torch.all(rec.attentions[0][..., 3] == 0)


def test_hf_bert_capture_matches_eager_attentions_with_padding():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64)
    torch.manual_seed(0)
    sdpa = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    ids = torch.randint(5, 50, (2, 6))
    att = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        y0 = sdpa(input_ids=ids, attention_mask=att).last_hidden_state
        with capture(sdpa) as rec:
            y1 = sdpa(input_ids=ids, attention_mask=att).last_hidden_state
        sdpa.set_attn_implementation("eager")
        ref = sdpa(input_ids=ids, attention_mask=att, output_attentions=True).attentions
    assert torch.equal(y0, y1)
    assert rec.layout.cls_index == 0 and rec.layout.grid is None
    for a, r in zip(rec.attentions, ref):
        assert a.shape == (2, 4, 6, 6)
        torch.testing.assert_close(a, r, atol=1e-6, rtol=1e-5)
        assert torch.all(a[1, ..., 4:] == 0)  # nobody attends to padding
    with torch.no_grad(), capture(sdpa, store="qk") as qk:
        sdpa(input_ids=ids, attention_mask=att)
    mask = qk.qk[0][3]
    assert torch.equal(mask[:, 0], att.bool())
    torch.testing.assert_close(cl.tokenrank(qk.lazy()[0]), cl.tokenrank(rec.attentions[0]),
                               atol=1e-5, rtol=0)


def test_center_token_is_the_middle_patch():
    assert TokenLayout(0, (1,), (2, 3), 2).center_token == 2 + 1 * 3 + 1
    assert TokenLayout(None, (), (4, 4), 0).center_token == 2 * 4 + 2
    with pytest.raises(ValueError, match="no patch grid"):
        TokenLayout(0, (), None, 1).center_token


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


def test_chain_without_cls_is_the_softmax_over_the_other_logits():
    """Dropping CLS (or CLS and registers) from the probabilities and renormalising, or from q and
    k, equals the softmax of the logits with those rows and columns removed (computed in float64)."""
    from chains_lite.capture import chain_without
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
    from chains_lite.capture import chain_without
    m, x = small_vit(reg_tokens=4), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), capture(m, layers=[2]) as probs, capture(m, layers=[2], store="qk") as qk:
        m(x)
    assert probs.layout.register_indices == (1, 2, 3, 4)
    dense, lay = chain_without(probs.attentions[0], probs.layout)
    lazy, lay_q = chain_without(qk.lazy()[0], qk.layout)
    assert lay == lay_q == TokenLayout(None, (0, 1, 2, 3), (4, 4), 4)
    torch.testing.assert_close(lazy.dense(), dense, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cl.tokenrank(lazy), cl.tokenrank(dense), atol=1e-5, rtol=1e-4)
