"""Interactive skeleton player for JupyterLab (ipywidgets).

``Player(motions, captions)`` shows one or several motions side by side and plays them with an ipywidgets
``Play`` linked (in the browser, ``jslink``) to a frame ``IntSlider``, a speed selector and a loop checkbox.
The picture is a plotly ``FigureWidget`` (needs ``anywidget``, as plotly >= 6 does) built from the same figure as
the HTML playback (:func:`easytune_lab.viz.playback.figure_dict`), whose skeleton traces are updated in place on
every frame; without ``anywidget`` it falls back to a matplotlib rendering shown as a PNG ``Image`` widget.

In a notebook, make ``Player(...)`` the last expression of a cell, or call ``.display()``.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

from ..errors import UserError
from .gif import skeleton_animation
from .playback import figure_dict

SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0)


def plotly_widgets_available() -> bool:
    """Whether plotly's FigureWidget can be built here (it needs the ``anywidget`` package)."""
    try:
        import anywidget  # noqa: F401
    except ImportError:
        return False
    return True


class Player:
    """A JupyterLab player of motions (features ``(T, 263|251)`` or joints ``(T, J, 3)``) side by side.

    Attributes (ipywidgets): ``play`` (Play), ``slider`` (IntSlider, frame index), ``speed`` (Dropdown, playback
    speed factor; the Play interval is ``1000 / (fps * speed)`` ms), ``loop`` (Checkbox, linked to
    ``play.repeat``), ``view`` (the FigureWidget, or an Image for the matplotlib fallback), ``widget`` (the whole
    box). ``backend`` is ``"plotly"``, ``"matplotlib"`` or ``"auto"`` (plotly when ``anywidget`` is installed).
    """

    def __init__(
        self,
        motions: Sequence[Any],
        captions: Sequence[str] | None = None,
        fps: float = 20,
        follow: bool = False,
        trace: bool = True,
        title: str | None = None,
        backend: str = "auto",
    ) -> None:
        import ipywidgets as widgets

        if backend not in ("auto", "plotly", "matplotlib"):
            raise UserError(f"backend: must be 'auto', 'plotly' or 'matplotlib' (got {backend!r})")
        if fps <= 0:
            raise UserError(f"fps: must be positive (got {fps})")
        if backend == "auto":
            backend = "plotly" if plotly_widgets_available() else "matplotlib"
        self.backend = backend
        self.fps = float(fps)
        self.follow = follow
        if backend == "plotly":
            self._init_plotly(motions, captions, fps, follow, trace, title)
        else:
            self._init_matplotlib(motions, captions, follow, trace, title)

        last = self.num_frames - 1
        self.play = widgets.Play(value=0, min=0, max=last, step=1, interval=self._interval(1.0), repeat=True,
                                 description="play")
        self.slider = widgets.IntSlider(value=0, min=0, max=last, step=1, description="frame",
                                        continuous_update=True, layout=widgets.Layout(width="50%"))
        self.speed = widgets.Dropdown(options=[(f"{s:g}x", s) for s in SPEEDS], value=1.0, description="speed",
                                      layout=widgets.Layout(width="160px"))
        self.loop = widgets.Checkbox(value=True, description="loop", indent=False,
                                     layout=widgets.Layout(width="80px"))
        widgets.jslink((self.play, "value"), (self.slider, "value"))
        widgets.link((self.loop, "value"), (self.play, "repeat"))
        self.slider.observe(lambda change: self.show_frame(change["new"]), names="value")
        self.speed.observe(lambda change: setattr(self.play, "interval", self._interval(change["new"])), names="value")
        controls = widgets.HBox([self.play, self.slider, self.speed, self.loop])
        self.widget = widgets.VBox([self.view, controls])
        self.frame = 0

    # ---------------------------------------------------------------------------------------------------------
    def _interval(self, speed: float) -> int:
        return max(1, int(round(1000.0 / (self.fps * speed))))

    def _init_plotly(self, motions, captions, fps, follow, trace, title) -> None:
        import plotly.graph_objects as go

        fig = figure_dict(motions, captions, title=title, fps=fps, follow=follow, trace=trace)
        self._frames = fig["frames"]
        self._traces = list(self._frames[0]["traces"])
        layout = dict(fig["layout"])
        layout.pop("updatemenus", None)
        layout.pop("sliders", None)
        layout["margin"] = dict(layout["margin"], b=0)
        layout.pop("width", None)  # fill the notebook's output area instead of a fixed width
        layout["autosize"] = True
        self.num_frames = len(self._frames)
        self.view = go.FigureWidget(data=fig["data"], layout=layout)

    def _init_matplotlib(self, motions, captions, follow, trace, title) -> None:
        import ipywidgets as widgets

        self._mpl_fig, self._mpl_draw, self.num_frames = skeleton_animation(
            motions, captions, follow=follow, trace=trace, title=title)
        self.view = widgets.Image(value=self._png(), format="png")

    def _png(self) -> bytes:
        buf = io.BytesIO()
        self._mpl_fig.savefig(buf, format="png")
        return buf.getvalue()

    # ---------------------------------------------------------------------------------------------------------
    def show_frame(self, k: int) -> None:
        """Pose every motion at frame ``k`` (clamped to the motion's length)."""
        k = int(min(max(k, 0), self.num_frames - 1))
        self.frame = k
        if self.backend == "matplotlib":
            self._mpl_draw(k)
            self.view.value = self._png()
            return
        frame = self._frames[k]
        with self.view.batch_update():
            for index, data in zip(self._traces, frame["data"]):
                self.view.data[index].update(x=data["x"], y=data["y"], z=data["z"])
            for scene, ranges in frame.get("layout", {}).items():
                self.view.layout[scene].xaxis.range = ranges["xaxis"]["range"]
                self.view.layout[scene].yaxis.range = ranges["yaxis"]["range"]

    def display(self) -> None:
        """Show the player in the current notebook output."""
        from IPython.display import display

        display(self.widget)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        return self.widget._repr_mimebundle_(**kwargs)
