"""The capture family of Hugging Face BERT encoders (MiniLM): ``encoder.layer[i].attention.self``
has ``query`` / ``key`` linears; token 0 is ``[CLS]``."""
from __future__ import annotations

import torch

from ..core.layout import TokenLayout
from .family import QK, Family, additive_mask, combine_bias, split_heads


# Hugging Face BERT (MiniLM): encoder.layer[i].attention.self has query / key linears.
def _bert_self_attentions(model) -> list:
    try:
        from transformers.models.bert.modeling_bert import BertSelfAttention
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, BertSelfAttention)]


def _bert_qk(sa, args, kwargs) -> QK:
    x = args[0] if args else kwargs["hidden_states"]
    h = sa.num_attention_heads
    q, k = split_heads(sa.query(x), h), split_heads(sa.key(x), h)
    mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
    return QK(q, k, sa.scaling, additive_mask(mask, True, torch.float32))


def _bert_with_bias(sa, args, kwargs, bias):
    kwargs = dict(kwargs)
    old = args[1] if len(args) > 1 else kwargs.get("attention_mask")
    kwargs["attention_mask"] = combine_bias(old, bias, True)
    return args[:1], kwargs


HF_BERT = Family("hf-bert", lambda m: len(_bert_self_attentions(m)) > 0, _bert_self_attentions,
                 _bert_qk, lambda m: TokenLayout(cls_index=0), _bert_with_bias)
