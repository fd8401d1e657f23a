"""FLUX joint-attention capture against an eager attention assembled from the module weights, and the
word maps of chains_lite.methods.segmentation against hand-computed bounces."""
import numpy as np
import pytest
import torch
from diffusers.models.embeddings import apply_rotary_emb

from chains_lite.methods.segmentation import (BOUNCE_METHODS, Setting, capture_concepts, capture_joint,
                                             capture_output_space,
                                             last_blocks, noised_attention, output_space_map, start_vectors,
                                             step_tokenrank, word_map, word_tokens)
from chains_lite.zoo.load import load_full
from chains_lite.zoo.models import image_ids

SMALL = dict(patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=16,
             num_attention_heads=3, joint_attention_dim=8, pooled_projection_dim=8,
             axes_dims_rope=(4, 6, 6))
B, GRID, TEXT = 2, 4, 5


@pytest.fixture(scope="module")
def flux():
    torch.manual_seed(0)
    model = load_full("flux-schnell", device="cpu", pretrained=False, **SMALL).model
    g = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(B, GRID * GRID, 4, generator=g),
                  encoder_hidden_states=torch.randn(B, TEXT, 8, generator=g),
                  pooled_projections=torch.randn(B, 8, generator=g), timestep=torch.full((B,), 0.5),
                  img_ids=image_ids(GRID), txt_ids=torch.zeros(TEXT, 3))
    return model, inputs


def _block_inputs(model, blocks):
    """Forward pre-hooks that keep each block's call kwargs (hidden states, temb, rotary emb)."""
    seen, handles = [], []
    for blk in blocks:
        handles.append(blk.register_forward_pre_hook(
            lambda m, a, kw: seen.append((m, kw)), with_kwargs=True))
    return seen, handles


def _eager_probs(blk, kw, single: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) of one block, assembled from its modules (text tokens first)."""
    a = blk.attn
    heads = lambda lin, norm, x: norm(lin(x).unflatten(-1, (a.heads, -1)))  # noqa: E731
    if single:
        x, _ = blk.norm(torch.cat([kw["encoder_hidden_states"], kw["hidden_states"]], 1), emb=kw["temb"])
        q, k = heads(a.to_q, a.norm_q, x), heads(a.to_k, a.norm_k, x)
    else:
        x = blk.norm1(kw["hidden_states"], emb=kw["temb"])[0]
        c = blk.norm1_context(kw["encoder_hidden_states"], emb=kw["temb"])[0]
        q = torch.cat([heads(a.add_q_proj, a.norm_added_q, c), heads(a.to_q, a.norm_q, x)], 1)
        k = torch.cat([heads(a.add_k_proj, a.norm_added_k, c), heads(a.to_k, a.norm_k, x)], 1)
    q = apply_rotary_emb(q, kw["image_rotary_emb"], sequence_dim=1).double()
    k = apply_rotary_emb(k, kw["image_rotary_emb"], sequence_dim=1).double()
    return (torch.einsum("bnhd,bmhd->bhnm", q, k) / q.shape[-1] ** 0.5).softmax(-1)


@pytest.mark.parametrize("kind", ["double", "single"])
def test_capture_matches_eager_attention_and_leaves_outputs_unchanged(flux, kind):
    model, inputs = flux
    blocks = model.transformer_blocks if kind == "double" else model.single_transformer_blocks
    originals = [b.attn.processor for b in blocks]
    with torch.no_grad():
        ref = model(**inputs).sample
        seen, handles = _block_inputs(model, blocks)
        with capture_joint(model, kind, store="probs") as rec:
            out = model(**inputs).sample
        for h in handles:
            h.remove()
        eager = [_eager_probs(m, kw, kind == "single") for m, kw in seen]
    assert torch.equal(ref, out)
    assert [b.attn.processor for b in blocks] == originals
    assert rec.layout.patch_start == TEXT and rec.layout.grid == (GRID, GRID)
    assert len(rec.attentions) == len(blocks) == len(eager)
    for got, want in zip(rec.attentions, eager):
        assert got.shape == (B, 3, TEXT + GRID * GRID, TEXT + GRID * GRID)
        torch.testing.assert_close(got.sum(-1), torch.ones(got.shape[:-1]))
        torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-4)


def test_stores_agree_over_blocks_and_steps(flux):
    model, inputs = flux
    later = dict(inputs, timestep=torch.full((B,), 0.25))
    recs = {}
    with torch.no_grad():
        for store in ("probs", "mean", "qk"):
            with capture_joint(model, layers=[-1, 0], store=store) as recs[store]:
                model(**inputs)
                model(**later)
    assert recs["mean"].layers == [0, 1] and recs["mean"].calls == 4
    want = torch.stack(recs["probs"].attentions).mean(0)
    torch.testing.assert_close(recs["mean"].mean(), want)
    torch.testing.assert_close(recs["qk"].mean(), want, atol=1e-6, rtol=1e-5)
    # the matrix-free chain bounces like the dense one, λ2 head weights included
    v_dense = word_map(recs["mean"].chain("lambda2"), recs["mean"].layout, TEXT - 1, "outgoing_2")
    v_lazy = word_map(recs["qk"].chain("lambda2"), recs["qk"].layout, TEXT - 1, "outgoing_2")
    torch.testing.assert_close(v_lazy, v_dense, atol=1e-5, rtol=1e-4)


def test_processors_restored_after_an_exception(flux):
    model, inputs = flux
    originals = [b.attn.processor for b in model.transformer_blocks]
    with pytest.raises(RuntimeError, match="boom"):
        with capture_joint(model):
            raise RuntimeError("boom")
    assert [b.attn.processor for b in model.transformer_blocks] == originals
    with pytest.raises(ValueError, match="nothing recorded"):
        with capture_joint(model) as rec:
            pass
        rec.mean()
    with pytest.raises(ValueError, match="out of range"):
        with capture_joint(model, layers=[5]):
            pass
    assert last_blocks(model, 10) == [0, 1] and last_blocks(model, 1, "single") == [1]


def _joint_chain(seed, n_text, grid, power):
    """A random row-stochastic joint chain ``(n, n)`` over ``n_text`` text tokens and a patch
    ``grid`` (entries ``u ** power``, u uniform), with its layout."""
    from chains_lite.core.layout import TokenLayout
    n = n_text + grid[0] * grid[1]
    A = np.random.default_rng(seed).random((n, n)) ** power
    return A / A.sum(1, keepdims=True), TokenLayout(None, (), grid, n_text)


def test_word_map_methods_are_the_hand_computed_bounces():
    n_text, grid = 3, (2, 2)
    A, layout = _joint_chain(0, n_text, grid, 3)
    n = len(A)
    j = 1
    A_l = A / A.sum(0, keepdims=True)            # column-normalised: A_l v is the outgoing bounce
    e = np.eye(n)[j]
    want = {"row_select": e @ A, "column_select": A_l @ e, "incoming_2": e @ A @ A,
            "incoming_3": e @ A @ A @ A, "outgoing_2": A_l @ (A_l @ e),
            "outgoing_3": A_l @ (A_l @ (A_l @ e))}
    for method in BOUNCE_METHODS:
        w = want[method] / want[method].sum()
        got = word_map(torch.tensor(A), layout, torch.tensor(e), method)
        np.testing.assert_allclose(got.numpy(), w[n_text:].reshape(grid), rtol=1e-9)


def test_word_tokens_and_start_vectors():
    caption = "a red star and a blue star on stripes"
    # offsets as a fast tokenizer gives them: [CLS] a red star and a blue star on strip ##es [SEP] pad
    offsets = [(0, 0), (0, 1), (2, 5), (6, 10), (11, 14), (15, 16), (17, 21), (22, 26), (27, 29),
               (30, 35), (35, 37), (0, 0), (0, 0)]
    tokens = {"offset_mapping": [offsets]}
    assert word_tokens(tokens, 0, caption, "star") == [3, 7]
    assert word_tokens(tokens, 0, caption, "Stripes") == [9, 10]
    assert word_tokens(tokens, 0, caption, "a") == [1, 5]          # whole words only
    with pytest.raises(ValueError, match="not a word"):
        word_tokens(tokens, 0, caption, "circle")
    v = start_vectors([[3, 7], [2]], 13)
    assert v[0, 3] == v[0, 7] == 0.5 and v[1, 2] == 1 and torch.allclose(v.sum(1), torch.ones(2))


def test_settings_parse_and_validate():
    assert Setting.parse("outgoing_2") == Setting()
    assert Setting.parse("incoming_3:uniform:single") == Setting("incoming_3", "uniform", "single")
    assert Setting("row_select", blocks="single").name == "row_select:lambda2:single"
    for bad in ("outgoing_9", "outgoing_2:softmax", "outgoing_2:lambda2:triple", "a:b:c:d"):
        with pytest.raises(ValueError):
            Setting.parse(bad)


def _steady(P):
    """The stationary distribution of a row-stochastic P: numpy's left eigenvector of eigenvalue 1."""
    vals, vecs = np.linalg.eig(P.T)
    v = np.real(vecs[:, np.argmin(np.abs(vals - 1))])
    return v / v.sum()


def test_steady_state_maps_are_numpys_stationary_distributions_whatever_the_start():
    from chains_lite.core.chain import DEFAULT_ALPHA
    n_text, grid = 3, (2, 3)
    A, layout = _joint_chain(3, n_text, grid, 2)
    n = len(A)
    tele = lambda P: DEFAULT_ALPHA * P + (1 - DEFAULT_ALPHA) / n  # noqa: E731
    A_l = A / A.sum(0, keepdims=True)
    for method, P in (("tokenrank_in", A), ("tokenrank_out", A_l.T)):
        pi = _steady(tele(P))[n_text:]
        starts = torch.tensor(np.eye(n)[[0, 2]])
        got = word_map(torch.tensor(A), layout, starts, method)
        assert got.shape == (2, *grid)
        for row in got:   # the same map from either start
            np.testing.assert_allclose(row.numpy(), (pi / pi.sum()).reshape(grid), rtol=1e-6)


def test_output_space_hook_reads_the_attention_outputs(flux):
    """The hook's similarity is o_img @ o_txt^T of the blocks' attention outputs, averaged over
    blocks and calls, and the model's output is unchanged."""
    model, inputs = flux
    outs, handles = [], []
    for blk in model.transformer_blocks:
        handles.append(blk.attn.register_forward_hook(lambda m, a, o: outs.append(o)))
    with torch.no_grad():
        ref = model(**inputs).sample
        for h in handles:
            h.remove()
        with capture_output_space(model) as acc:
            got = model(**inputs).sample
            model(**inputs)
    assert torch.equal(ref, got) and acc.calls == 2 * len(model.transformer_blocks)
    want = torch.stack([img @ txt.transpose(-1, -2) for img, txt in outs]).mean(0)
    torch.testing.assert_close(acc.mean(), want)
    assert acc.mean().shape == (B, GRID * GRID, TEXT)
    # a word's map is the similarity at its tokens, weighted by the start
    from chains_lite.core.layout import TokenLayout
    layout = TokenLayout(None, (), (GRID, GRID), TEXT)
    start = start_vectors([[1, 3], [2]], TEXT + GRID * GRID)
    m = output_space_map(acc.mean(), layout, start)
    torch.testing.assert_close(m[0], ((want[0, :, 1] + want[0, :, 3]) / 2).reshape(GRID, GRID))
    torch.testing.assert_close(m[1], want[1, :, 2].reshape(GRID, GRID))
    with pytest.raises(ValueError, match="no block call"):
        with capture_output_space(model) as empty:
            pass
        empty.mean()


def test_concept_tokens_equal_to_the_text_follow_the_text_stream_and_change_nothing(flux):
    """ConceptAttention's concept stream run on concepts equal to the caption's own text tokens is
    the model's text stream: its saliency equals the output-space hook's o_img @ o_txt^T, block by
    block (layers), and the model's output is the same with the concepts as without."""
    model, inputs = flux
    with torch.no_grad():
        ref = model(**inputs).sample
        for layers in (None, [-1], [0]):
            with capture_output_space(model, layers=layers) as want, \
                    capture_concepts(model, inputs["encoder_hidden_states"], layers=layers) as got:
                out = model(**inputs).sample
            assert torch.equal(out, ref)
            assert got.calls == want.calls == (2 if layers is None else 1)
            torch.testing.assert_close(got.mean(), want.mean(), rtol=1e-4, atol=1e-5)
        # other concepts: K of them, each a map over the image; the model's output is unchanged
        concepts = torch.randn(B, 3, 8, generator=torch.Generator().manual_seed(2))
        with capture_concepts(model, concepts) as acc:
            assert torch.equal(model(**inputs).sample, ref)
    assert acc.mean().shape == (B, GRID * GRID, 3)
    assert not torch.allclose(acc.mean()[..., 0], acc.mean()[..., 1])


def test_per_step_records_average_to_the_whole_run_and_give_each_steps_tokenrank(flux):
    from types import SimpleNamespace
    from chains_lite.core.chain import tokenrank
    model, inputs = flux
    x = SimpleNamespace(x0=inputs["hidden_states"], text=inputs["encoder_hidden_states"],
                        pooled=inputs["pooled_projections"], img_ids=inputs["img_ids"],
                        txt_ids=inputs["txt_ids"], guidance=None)
    whole = noised_attention(model, x, t=0.75, steps=3, seed=4)
    steps = noised_attention(model, x, t=0.75, steps=3, seed=4, per_step=True)
    assert len(steps) == 3 and all(r.calls == len(model.transformer_blocks) for r in steps)
    # every step records as many calls, so the mean of the step means is the run's mean
    torch.testing.assert_close(torch.stack([r.mean() for r in steps]).mean(0), whole.mean())
    torch.testing.assert_close(steps[-1].latents, whole.latents)
    tr = step_tokenrank(steps, "uniform")
    assert tr.shape == (3, B, GRID, GRID)
    pi = tokenrank(steps[1].mean().mean(1).double())[:, TEXT:]
    torch.testing.assert_close(tr[1].flatten(1).double(), pi / pi.sum(-1, keepdim=True), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        step_tokenrank([])


def test_output_space_setting():
    assert Setting("output_space").name == "output_space"
    assert Setting("concept_attention", heads="uniform").name == "concept_attention"
    assert Setting.parse("tokenrank_out").name == "tokenrank_out:lambda2"
    for method in ("output_space", "concept_attention"):
        with pytest.raises(ValueError, match="double"):
            Setting(method, blocks="single")
