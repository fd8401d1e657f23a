"""Pictures of chains: plots (:mod:`~chains_lite.viz.plots`) and the explorers, live ipywidgets in
Jupyter and static players in the built book (:mod:`~chains_lite.viz.html_player`).

    from chains_lite import viz
    viz.plot_chain_graph(A); viz.plot_bounce_sequence(viz.bounce_sequence(A), labels)
"""
from .plots import (attention_explorer, bounce_explorer, bounce_sequence, plot_bounce_sequence, plot_chain_graph,
                    plot_distribution, plot_maps, plot_matrix, plot_spectrum)

__all__ = ["attention_explorer", "bounce_explorer", "bounce_sequence", "plot_bounce_sequence", "plot_chain_graph",
           "plot_distribution", "plot_maps", "plot_matrix", "plot_spectrum"]
