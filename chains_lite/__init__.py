"""chains_lite: attention matrices as discrete-time Markov chains.

    import chains_lite as cl
    cl.bounce(A, 4, steps=2); cl.tokenrank(A); cl.lambda2(A)     # the chain math (chains_lite.core)
    with cl.capture(model) as rec: model(x)                      # attention out of models (chains_lite.capture)

The folders follow the work: ``core`` (the math), ``capture`` (reading models), ``methods`` (one
module per chapter idea), ``eval`` (metrics and statistics), ``experiments`` (dataset-scale
tables), ``viz`` (plots and players), ``zoo`` (ShapeWorld, the lite models, the paper's models).
"""
from .capture import add_logit_bias, capture
from .core.chain import (DEFAULT_ALPHA, bounce, check_stochastic, column_select, column_sum, head_weights, lambda2,
                         mix, mix_heads, row_select, teleport, tokenrank, transition_matrix)
from .core.layout import TokenLayout, chain_without
from .core.lazy import DEFAULT_MAX_BYTES, LazyAttention, LazyMixture

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ALPHA", "bounce", "check_stochastic", "column_select", "column_sum",
    "head_weights", "lambda2", "mix", "mix_heads", "row_select", "teleport", "tokenrank",
    "transition_matrix", "LazyAttention", "LazyMixture", "DEFAULT_MAX_BYTES",
    "capture", "add_logit_bias", "chain_without", "TokenLayout",
]
