"""chains_lite: attention matrices as discrete-time Markov chains.

The math lives in :mod:`chains_lite.chain`; see the book for the why.
"""
from .chain import (
    DEFAULT_ALPHA,
    bounce,
    check_stochastic,
    column_select,
    column_sum,
    head_weights,
    lambda2,
    mix,
    mix_heads,
    row_select,
    teleport,
    tokenrank,
    transition_matrix,
)
from .capture import TokenLayout, add_logit_bias, capture, chain_without
from .lazy import DEFAULT_MAX_BYTES, LazyAttention, LazyMixture

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ALPHA", "bounce", "check_stochastic", "column_select", "column_sum",
    "head_weights", "lambda2", "mix", "mix_heads", "row_select", "teleport", "tokenrank",
    "transition_matrix", "LazyAttention", "LazyMixture", "DEFAULT_MAX_BYTES",
    "capture", "add_logit_bias", "chain_without", "TokenLayout",
]
