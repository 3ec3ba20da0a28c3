"""Figures and tables, each written with its provenance so it can be traced to the rows that made it.

- ``files``: writing them (:func:`save_figure`, :class:`SavedFigure`, :func:`save_table`,
  :func:`markdown_table`), with a ``.json`` sidecar naming the commit, versions, settings and runs;
- ``charts``: drawing them: mAP bars (:func:`bar_by_method`, :func:`bar_panels`), shot and backbone
  scaling, a run's history, mAP and silhouette bars, UMAP grids, the knowledge study and the costs.

Every name is importable from ``kalahash.plots``.
"""

from .charts import (
    backbone_scaling,
    bar_by_method,
    bar_panels,
    efficiency_panels,
    knowledge_use,
    map_silhouette_bars,
    plot_history,
    plot_run_history,
    shot_scaling,
    umap_grid,
)
from .files import SavedFigure, markdown_table, save_figure, save_table

__all__ = [
    "SavedFigure",
    "backbone_scaling",
    "bar_by_method",
    "bar_panels",
    "efficiency_panels",
    "knowledge_use",
    "map_silhouette_bars",
    "markdown_table",
    "plot_history",
    "plot_run_history",
    "save_figure",
    "save_table",
    "shot_scaling",
    "umap_grid",
]
