"""easytune_lab.viz: skeleton playback (offline HTML, JupyterLab widget, GIF/MP4) and claim-figure plots.

- :mod:`.playback`: ``write_motion_html`` / ``motion_figure`` (plotly, pre-computed frames, offline HTML);
- :mod:`.widget`: ``Player`` (ipywidgets Play + slider driving a plotly FigureWidget, matplotlib fallback);
- :mod:`.gif`: ``write_gif`` (matplotlib PillowWriter, MP4 with ffmpeg);
- :mod:`.plots`: ``line_plot`` with confidence bands, ``bar_chart``, ``mean_ci``, ``save_png``.

BVH export lives in :mod:`easytune_lab.motion.bvh`. Submodules import plotly/matplotlib/ipywidgets lazily.
"""
