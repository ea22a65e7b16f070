"""The names every claim notebook uses, for its two-line setup cell::

    from easytune_lab.notebook import *  # json, np, pd, torch, write_json, the plot helpers, notebook_setup
    wb, out, figure_label = notebook_setup("00_quickstart", profile, seed=seed, device=device, cache=cache,
                                           data=data, out_dir=out_dir)

:func:`easytune_lab.pipeline.notebook_setup` builds the workbench from the parameters cell; the plot helpers
(:mod:`easytune_lab.viz.plots`) label, save and show every figure and write every table with its profile and seed.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from .io import write_json
from .pipeline import notebook_setup
from .viz.plots import Series, bar_chart, line_plot, new_figure, run_label, show_figure, write_table

__all__ = ["json", "np", "pd", "torch", "write_json", "notebook_setup", "Series", "bar_chart", "line_plot",
           "new_figure", "run_label", "show_figure", "write_table"]
