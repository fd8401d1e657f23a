"""Controls that keep working in a static web page: frames drawn ahead, picked by a few lines of JS.

An ipywidgets control redraws its figure in a running kernel; the built book has none, so there a
widget is a dead picture. :func:`frame_player` takes the same controls (dropdowns and sliders),
draws one frame for every combination of their values while the notebook executes, and returns
self-contained HTML whose script only shows the frame of the current choice (no kernel, no CDN).
:class:`Explorer` puts both in one output: Jupyter and Colab show the live widget, the book the
player. Frames are PNG data URIs; identical parts (an input image shown in many frames) are
stored once.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import itertools
import json
from typing import Callable, Sequence

import matplotlib.pyplot as plt
import torch

__all__ = ["Explorer", "frame_player", "png"]


def png(image, cmap: str | None = None, dpi: int = 72) -> str:
    """A PNG data URI of a matplotlib figure (closed afterwards) or of an image array.

    Arrays: ``(h, w)`` is drawn pixel for pixel with ``cmap`` after min-max scaling (only its
    shape matters, as in the book's maps); ``(3, h, w)`` or ``(h, w, 3)`` is RGB in [0, 1].
    """
    buf = io.BytesIO()
    if isinstance(image, plt.Figure):
        image.savefig(buf, format="png", dpi=dpi)  # no bbox_inches="tight": it draws twice
        plt.close(image)
    else:
        a = torch.as_tensor(image).detach().float().cpu()
        if a.ndim == 3 and a.shape[0] == 3:
            a = a.permute(1, 2, 0)
        if a.ndim == 2:
            a = (a - a.min()) / (a.max() - a.min()).clamp_min(1e-12)
            plt.imsave(buf, a.numpy(), cmap=cmap or "inferno", vmin=0, vmax=1, format="png")
        elif a.ndim == 3 and a.shape[-1] == 3:
            plt.imsave(buf, a.clamp(0, 1).numpy(), format="png")
        else:
            raise ValueError(f"expected a figure, an (h, w) map or an RGB image, got {tuple(a.shape)}")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _options(values: Sequence) -> list[tuple[str, object]]:
    """(label, value) pairs; a bare value is its own label."""
    return [v if isinstance(v, tuple) and len(v) == 2 else (f"{v:g}" if isinstance(v, float) else str(v), v)
            for v in values]


def _is_slider(options) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for _, v in options)


def frame_player(controls: dict[str, Sequence], draw: Callable[..., Sequence],
                 value: dict | None = None, title: str = "", width: int | None = None) -> str:
    """Self-contained HTML that shows ``draw(**choice)`` for the choice made with its controls.

    controls: ``{name: values}``; numbers make a slider, anything else a dropdown (give
    ``(label, value)`` pairs to name the options). draw: called once per combination of values
    with them as keyword arguments; returns the frame's parts, each a PNG data URI (see
    :func:`png`) or a line of text. Every combination must give the same number of parts.
    value: the initial choice (default: the first value of each control). width: the CSS
    width in pixels of each image (default: its own size; small maps are scaled up crisply).
    """
    if not controls:
        raise ValueError("frame_player needs at least one control")
    opts = {name: _options(values) for name, values in controls.items()}
    empty = [name for name, o in opts.items() if not o]
    if empty:
        raise ValueError(f"controls without values: {empty}")
    start = []
    for name, o in opts.items():
        values = [v for _, v in o]
        want = (value or {}).get(name, values[0])
        if want not in values:
            raise ValueError(f"initial value {want!r} of {name!r} is not one of {values}")
        start.append(values.index(want))

    parts, index, frames = [], {}, {}
    for combo in itertools.product(*(range(len(o)) for o in opts.values())):
        frame = draw(**{name: o[i][1] for (name, o), i in zip(opts.items(), combo)})
        if frames and len(frame) != len(next(iter(frames.values()))):
            raise ValueError("every frame must have the same number of parts")
        for part in frame:
            if part not in index:
                index[part] = len(parts)
                parts.append(part)
        frames[",".join(map(str, combo))] = [index[p] for p in frame]

    payload = json.dumps({"parts": parts, "frames": frames})
    uid = "chains-player-" + hashlib.sha1(payload.encode()).hexdigest()[:12]
    rows = []
    for (name, o), i in zip(opts.items(), start):
        label = html.escape(name)
        if _is_slider(o):
            rows.append(f'<label>{label} <input type="range" data-name="{label}" min="0" '
                        f'max="{len(o) - 1}" step="1" value="{i}"> <output>{html.escape(o[i][0])}</output>'
                        "</label>")
        else:
            items = "".join(f'<option value="{j}"{" selected" if j == i else ""}>{html.escape(lab)}</option>'
                            for j, (lab, _) in enumerate(o))
            rows.append(f'<label>{label} <select data-name="{label}">{items}</select></label>')
    labels = json.dumps([[lab for lab, _ in o] for o in opts.values()])
    size = f"width:{width}px;image-rendering:pixelated;" if width else ""
    heading = f"<div><b>{html.escape(title)}</b></div>" if title else ""
    return f"""<div class="chains-player" id="{uid}" style="margin:0.5em 0">{heading}
<div class="chains-player-controls" style="display:flex;flex-wrap:wrap;gap:0.3em 1.2em">{"".join(rows)}</div>
<div class="chains-player-frame" style="display:flex;flex-wrap:wrap;align-items:flex-start;gap:0.5em"></div>
<script>
(function () {{
  const root = document.getElementById("{uid}"), data = {payload}, labels = {labels};
  const inputs = Array.from(root.querySelectorAll("[data-name]"));
  const box = root.querySelector(".chains-player-frame");
  function show() {{
    inputs.forEach((el, i) => {{ if (el.nextElementSibling) el.nextElementSibling.textContent = labels[i][el.value]; }});
    const frame = data.frames[inputs.map((el) => el.value).join(",")];
    box.replaceChildren(...frame.map((p) => {{
      const part = data.parts[p];
      if (!part.startsWith("data:image/")) {{
        const div = document.createElement("div"); div.textContent = part; div.style.flexBasis = "100%"; return div;
      }}
      const img = document.createElement("img"); img.src = part; img.alt = "frame"; img.style = "{size}max-width:100%";
      return img;
    }}));
  }}
  inputs.forEach((el) => el.addEventListener("input", show));
  show();
}})();
</script></div>"""


class Explorer:
    """One output for two readers: the live ipywidget where a kernel runs it, the player elsewhere.

    ``_repr_mimebundle_`` gives the widget's view (which Jupyter and Colab render first) next to
    ``text/html`` with the :func:`frame_player` HTML (which the book renders: its config drops the
    widget view, as no kernel can drive it there). ``widget`` may be None (no ipywidgets).
    """

    def __init__(self, widget, html: str):
        self.widget, self.html = widget, html

    def _repr_mimebundle_(self, include=None, exclude=None):
        bundle = {"text/plain": "<chains_lite explorer>", "text/html": self.html}
        if self.widget is not None:
            bundle.update(self.widget._repr_mimebundle_())
        return bundle

