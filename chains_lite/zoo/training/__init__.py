"""Training the lite models (a maintainer's job, apart from what a reader calls): ``train`` (the
loop and the command line, ``python -m chains_lite.zoo.training NAME``), ``objectives`` (each
model's loss, defaults and card metric), ``evaluate`` (the card numbers)."""
