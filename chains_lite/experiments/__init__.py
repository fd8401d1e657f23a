"""The harness of the dataset-scale tables: ``runner`` (resumable, data-parallel runs) with
``results`` (result files) and ``cli`` (the skeleton every benchmark script shares), and each
chapter's table code: ``maps`` (2), ``segmentation`` (3), ``sag`` (4), ``diffseg`` (5), ``masking`` (6)."""
