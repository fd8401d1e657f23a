"""Progress bars that a built book can switch off.

Long loops show a ``tqdm`` bar (``tqdm.auto``: a live widget in Jupyter and Colab, text in a
terminal). A bar executed while a book is built is frozen into the HTML at whatever it showed
last, so the book's builds set ``CHAINS_PROGRESS=off``; :func:`progress_bar` then disables every
bar, even one whose caller passes ``disable=False``. ``TQDM_DISABLE`` (tqdm's own variable, which
an explicit ``disable=`` argument would override) is honoured the same way.
"""
from __future__ import annotations

import os

from tqdm.auto import tqdm

#: The environment variable that switches every bar off: ``off``, ``0``, ``false`` or ``no``.
ENV = "CHAINS_PROGRESS"
_OFF = ("off", "0", "false", "no")
_TRUE = ("1", "true", "yes", "on")


def progress_disabled() -> bool:
    """Whether the environment switches bars off: ``CHAINS_PROGRESS`` is one of off/0/false/no
    (any case), or ``TQDM_DISABLE`` is one of 1/true/yes/on."""
    return (os.environ.get(ENV, "").strip().lower() in _OFF
            or os.environ.get("TQDM_DISABLE", "").strip().lower() in _TRUE)


def progress_bar(iterable=None, *args, disable: bool = False, **kwargs):
    """``tqdm.auto.tqdm(iterable, *args, disable=..., **kwargs)``, disabled where the caller asks
    (``disable=True``) or the environment does (:func:`progress_disabled`)."""
    return tqdm(iterable, *args, disable=bool(disable) or progress_disabled(), **kwargs)
