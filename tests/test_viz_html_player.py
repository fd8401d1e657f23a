"""The static player shows, for every choice of its controls, the frame drawn for that choice."""

import base64
import json
import re

import matplotlib

matplotlib.use("Agg")  # headless: no display needed

import matplotlib.pyplot as plt
import pytest
import torch

from chains_lite import viz
from chains_lite.core.layout import TokenLayout
from chains_lite.viz.html_player import Explorer, frame_player, png

CHAIN = torch.softmax(2 * torch.randn(5, 5, generator=torch.Generator().manual_seed(0)), -1)


def _payload(html: str) -> dict:
    return json.loads(re.search(r"data = (\{.*?\}), labels", html).group(1))


def _png_size(uri: str) -> tuple[int, int]:
    raw = base64.b64decode(uri.split(",", 1)[1])
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


def test_every_combination_shows_its_own_frame():
    html = frame_player({"k": [1, 2, 3], "who": [("Ann", "a"), ("Bob", "b")]},
                        lambda k, who: [f"{who}{k}", "shared"], value={"k": 2, "who": "b"})
    data = _payload(html)
    assert len(data["frames"]) == 6
    for i, k in enumerate([1, 2, 3]):
        for j, who in enumerate(["a", "b"]):
            assert [data["parts"][p] for p in data["frames"][f"{i},{j}"]] == [f"{who}{k}", "shared"]
    assert data["parts"].count("shared") == 1  # a part seen in many frames is stored once
    # numbers make a slider starting at the chosen value, anything else a dropdown
    assert re.search(r'type="range" data-name="k" min="0" max="2" step="1" value="1"', html)
    assert '<option value="1" selected>Bob</option>' in html and "<option value=\"0\">Ann</option>" in html


def test_bad_controls_are_refused():
    with pytest.raises(ValueError, match="not one of"):
        frame_player({"k": [1, 2]}, lambda k: ["x"], value={"k": 5})
    with pytest.raises(ValueError, match="same number of parts"):
        frame_player({"k": [1, 2]}, lambda k: ["x"] * k)
    with pytest.raises(ValueError, match="without values"):
        frame_player({"k": []}, lambda k: ["x"])


def test_png_draws_a_map_pixel_for_pixel_and_closes_figures():
    assert _png_size(png(torch.rand(4, 7))) == (7, 4)
    assert _png_size(png(torch.rand(3, 5, 6))) == (6, 5)
    fig = plt.figure(figsize=(2, 1))
    assert _png_size(png(fig, dpi=50)) == (100, 50)
    assert not plt.get_fignums()
    with pytest.raises(ValueError, match="RGB"):
        png(torch.rand(2, 3, 3, 3))


def test_explorer_offers_the_widget_and_the_static_html():
    class Widget:
        def _repr_mimebundle_(self, **kwargs):
            return {"text/plain": "w", "application/vnd.jupyter.widget-view+json": {"model_id": "1"}}

    bundle = Explorer(Widget(), "<div>static</div>")._repr_mimebundle_()
    assert bundle["text/html"] == "<div>static</div>"
    assert bundle["application/vnd.jupyter.widget-view+json"] == {"model_id": "1"}
    assert set(Explorer(None, "<p>")._repr_mimebundle_()) == {"text/plain", "text/html"}


def test_bounce_explorer_has_a_frame_per_start_and_number_of_bounces():
    e = viz.bounce_explorer(CHAIN, max_steps=3, start=4, steps=2)
    data = _payload(e.html)
    assert len(data["frames"]) == 4 * 6  # bounces 0..3 x (uniform + 5 states)
    # from a one-hot start the frames differ with the number of bounces (the mass moves)
    assert len({tuple(data["frames"][f"{k},5"]) for k in range(4)}) == 4
    assert 'value="2"' in e.html and '<option value="5" selected>state 4</option>' in e.html
    assert [c.description for c in e.widget.children[:2]] == ["bounces", "start"]
    assert viz.bounce_explorer(CHAIN, max_steps=1, interactive=False).widget is None


def test_attention_explorer_frames_show_the_map_of_their_layer():
    lay = TokenLayout(0, (), (2, 2), 1)
    g = torch.Generator().manual_seed(0)
    atts = [torch.rand(2, 5, 5, generator=g).softmax(-1) for _ in range(3)]
    image = torch.rand(3, 8, 8, generator=g)
    e = viz.attention_explorer({"m": (atts, lay, image)})
    assert [c.description for c in e.widget.children[:6]] == [
        "model", "layer", "head", "method", "bounces", "alpha"]
    data = _payload(e.html)
    methods = len(viz_methods())
    assert len(data["frames"]) == 3 * 2 * methods
    assert len({data["frames"][k][0] for k in data["frames"]}) == 1  # one input image, stored once
    from chains_lite.methods.maps import explore_map
    from chains_lite.viz.plots import overlay
    want = png(overlay(image, explore_map(atts[1], lay, "uniform", "column_sum")))  # over its image
    j = viz_methods().index("column_sum")
    assert data["parts"][data["frames"][f"0,1,0,{j}"][1]] == want
    assert "layer 1, head uniform: column_sum" in data["parts"][data["frames"][f"0,1,0,{j}"][2]]
    plt.close("all")


def viz_methods():
    from chains_lite.methods.maps import EXPLORE_METHODS
    return list(EXPLORE_METHODS)
