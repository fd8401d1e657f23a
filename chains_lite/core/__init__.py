"""The chain math: bounces, TokenRank, λ2 and head weights (the lesson API, :mod:`.chain`), the
solvers behind them (:mod:`.solvers`, :mod:`.krylov`), matrix-free chains from ``q`` and ``k``
(:mod:`.lazy`), token layouts (:mod:`.layout`), the registry of per-token scores (:mod:`.scores`),
per-item seeds (:mod:`.seeding`), shared numerics, synthetic attention-like chains and chains with
planted structure and known ground truth (:mod:`.planted`), and the progress bars (:mod:`.progress`).

Nothing here knows a model: :mod:`chains_lite.capture` reads attention out of models, and the
chapters' methods (:mod:`chains_lite.methods`) compose the two.
"""
from .chain import (DEFAULT_ALPHA, bounce, check_stochastic, column_select, column_sum, head_weights, lambda2, mix,
                    mix_heads, row_select, teleport, tokenrank, transition_matrix)
from .layout import TokenLayout, chain_without
from .lazy import DEFAULT_MAX_BYTES, LazyAttention, LazyMixture

__all__ = ["DEFAULT_ALPHA", "DEFAULT_MAX_BYTES", "LazyAttention", "LazyMixture", "TokenLayout", "bounce",
           "chain_without", "check_stochastic", "column_select", "column_sum", "head_weights", "lambda2", "mix",
           "mix_heads", "row_select", "teleport", "tokenrank", "transition_matrix"]
