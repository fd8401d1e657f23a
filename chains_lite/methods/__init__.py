"""One module per chapter idea, each a composition of :mod:`chains_lite.core` and
:mod:`chains_lite.capture`: ``maps`` (chapter 2, global maps of ViTs), ``segmentation`` (chapter 3,
FLUX's joint attention and multi-bounce word maps), ``sag`` (chapter 4, self-attention guidance
with TokenRank masks), ``diffseg`` (chapter 5, DiffSeg with TokenRank anchors), ``masking`` and
``probing`` (chapter 6). Scoring them on datasets is :mod:`chains_lite.experiments`.
"""
