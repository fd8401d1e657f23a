"""What full mode needs, checked in seconds before anything is downloaded or computed.

``preflight(name, ...)`` raises one ``FullModeUnavailable`` (a ``RuntimeError``) listing every
missing piece, and the fix for the caller's entry point:

* a GPU, for the models that need one (FLUX, Stable Diffusion), except in a dry run;
* the Python packages the model's library needs, and any the caller names (``h5py`` for the
  ImageNet-Segmentation ``.mat`` file);
* the data paths the caller names;
* the Hugging Face hub (both skipped in a dry run, ``CHAINS_FULL_WEIGHTS=random``): with ``HF_HUB_OFFLINE=1`` the weights must be in the hub cache; otherwise
  the hub (``HF_ENDPOINT``, default https://huggingface.co) is probed once with a short timeout.
  Without this, an unreachable hub costs about 50 s of retries inside the hub client first.

``zoo.load_full`` calls it; a runner calls it once its arguments are parsed, with its own ``fix``.
"""
from __future__ import annotations

import importlib.util
import os
import urllib.error
import urllib.request
from pathlib import Path

import torch

from .catalog import full_spec, random_weights

#: The remedy printed when no entry point names its own.
DEFAULT_FIX = ("run in lite mode instead: zoo.load(name, mode='lite'), or CHAINS_MODE=lite for the "
               "notebooks, or --mode lite for the benchmark runners")

_FAMILY_PACKAGES = {"timm": ("timm",), "open_clip": ("open_clip",),
                    "flux": ("diffusers", "transformers"), "sd": ("diffusers", "transformers")}
_OFFLINE_VALUES = ("1", "true", "yes", "on")


class FullModeUnavailable(RuntimeError):
    """Full mode cannot run here; the message lists what is missing and how to fix it."""


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for the hub cache only (read now, not at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _OFFLINE_VALUES


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_cache() -> Path:
    """The hub cache folder, as ``huggingface_hub`` resolves it from the environment."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface")
    return Path(home) / "hub"


def probe_hub(repo: str, timeout: float = 3.0) -> str | None:
    """One request for ``repo``'s metadata (``/api/models/<repo>``): ``None`` if the hub answers it
    (200, or 401 / 403 for a gated model), else why not. Any other status counts as unreachable:
    a proxy or captive portal answers too, with 404 or a redirect."""
    url = f"{hub_endpoint()}/api/models/{repo}"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError as e:
        return None if e.code in (401, 403) else f"HTTP {e.code} for {url}"
    except urllib.error.URLError as e:
        return str(e.reason)
    except (OSError, ValueError) as e:  # a timeout, or a malformed HF_ENDPOINT
        return str(e) or type(e).__name__
    return None


def is_cached(repo: str) -> bool:
    """Whether the hub cache holds a snapshot of ``repo`` (``owner/name``)."""
    snapshots = hub_cache() / f"models--{repo.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def preflight(name: str, device=None, data: dict | None = None, packages=(), fix: str = DEFAULT_FIX,
              timeout: float = 3.0) -> None:
    """Check that the full model ``name`` can load and run here; raise ``FullModeUnavailable`` if not.

    device: where it will run (default CUDA when available). data: ``{what: path}`` that must exist,
    ``what`` as the caller's user knows it (e.g. ``"--data"``). packages: extra modules to import
    (e.g. ``["h5py"]``). fix: the remedy for this entry point (e.g. ``"use --mode lite"``).
    timeout: seconds for the single hub probe.
    """
    spec = full_spec(name)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dry = random_weights()       # a dry run needs neither a GPU nor the hub
    problems = []
    if device.type == "cuda" and not torch.cuda.is_available():
        problems.append(f"device={device} but no CUDA GPU is available")
    elif spec.needs_gpu and device.type != "cuda" and not dry:
        why = "no CUDA GPU is available" if not torch.cuda.is_available() else f"device={device}"
        problems.append(f"{name} needs a CUDA GPU ({why})")
    missing = [p for p in (*_FAMILY_PACKAGES[spec.family], *packages) if importlib.util.find_spec(p) is None]
    if missing:
        problems.append(f"missing Python packages {missing}: pip install {' '.join(missing)}")
    for what, path in (data or {}).items():
        if path is None or not Path(path).exists():
            problems.append(f"{what}: {path!r} does not exist")
    if dry:
        pass
    elif hub_offline():
        if not is_cached(spec.hub_repo):
            problems.append(f"HF_HUB_OFFLINE is set but {spec.hub_repo} is not in the hub cache "
                            f"{hub_cache()}: download it once with network access (`hf download "
                            f"{spec.hub_repo}`), or point HF_HOME / HF_HUB_CACHE at a cache that holds it")
    elif (why := probe_hub(spec.hub_repo, timeout)) is not None:
        problems.append(f"the Hugging Face hub ({hub_endpoint()}) is unreachable ({why}; timeout {timeout:g} s) "
                        f"and {spec.hub_repo} must come from it; if the weights are in the hub cache, set "
                        "HF_HUB_OFFLINE=1")
    if problems:
        raise FullModeUnavailable(f"full mode cannot run {name} ({spec.hub_id}) here: "
                                  + "; ".join(problems) + f".\nFix: {fix}.")
