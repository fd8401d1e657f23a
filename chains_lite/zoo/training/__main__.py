"""``python -m chains_lite.zoo.training NAME [options]``: see :mod:`chains_lite.zoo.training.train`."""
from .train import main

main()
