"""Hypothesis runs the same examples every time (so a CI result can be reproduced), unless
HYPOTHESIS_PROFILE=explore asks for fresh random examples."""
import os

from hypothesis import settings

settings.register_profile("deterministic", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))
