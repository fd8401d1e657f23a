"""Capture of Hugging Face BERT (chains_lite.capture.bert) against the model's eager attentions."""

import pytest
import torch

timm = pytest.importorskip("timm")

import chains_lite as cl  # noqa: E402
from chains_lite.capture import capture  # noqa: E402


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
