"""Measuring results: ``metrics`` (AUROC, IoU, binary and Hungarian-matched segmentation scores),
``quality`` (Fréchet distance, KID, IS of generated samples), ``stats`` (the one bootstrap and the
one Wilcoxon test)."""
