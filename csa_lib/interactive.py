"""Inpaint your own photo, interactively: draw the hole with the mouse, fill it, click to see the attention.

:class:`PhotoInpainter` holds one photo at the network's resolution, a hole mask that strokes paint, and
the last result (fill, composite and the CSA layer's attention record). Every step is a plain method:

    >>> app = PhotoInpainter(load_model("celeba64"))           # csa_lib.inference; or (generator, preprocessing)
    >>> app.add_photo("me", Image.open("me.jpg"))              # doctest: +SKIP
    >>> app.draw_stroke([(20, 10), (24, 50)], radius=3)        # (y, x) in network pixels
    >>> app.run()                                              # fill, composite, attention
    >>> app.pick(22, 30)                                       # where did this hole position look?

:meth:`PhotoInpainter.widget` puts the same steps behind the mouse (JupyterLab or Colab with ipycanvas
and ipywidgets, the ``widgets`` extra): draw on the left canvas (the hole is filled when the button is released),
click a hole position on the composite to see its source (offset arrow) and its attention row (heat map).
:meth:`PhotoInpainter.figure` draws the current state as a static matplotlib figure, which is what a
notebook shows where no widget front end runs (nbval, nbconvert). Images are ``[3, S, S]`` in [-1, 1],
masks ``[1, S, S]`` with 1 = hole, as everywhere in ``csa_lib``.
"""
from __future__ import annotations

import io
import time
from typing import Sequence

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageOps

from . import viz
from .attention_maps import attention_heatmap, chain_predecessors, hole_step
from .attention_stats import run_with_attention_input
from .data import prepare_image, to_tensor
from .inference import InpaintModel


def _rgb(image: torch.Tensor, scale: int) -> np.ndarray:
    """``[3, S, S]`` in [-1, 1] -> uint8 ``[S*scale, S*scale, 3]`` (nearest: network pixels stay visible)."""
    arr = (viz.to_display(image) * 255).round().astype(np.uint8)
    return arr.repeat(scale, 0).repeat(scale, 1)


def heat_overlay(image: torch.Tensor, heat: torch.Tensor | np.ndarray, cmap: str = "magma") -> np.ndarray:
    """An attention map ``[S, S]`` over a greyed image ``[3, S, S]`` -> ``[S, S, 3]`` in [0, 1].

    The map is scaled by its largest absolute value, so the strongest source is the brightest colour."""
    h = np.asarray(heat, dtype=np.float64)
    h = np.abs(h) / max(float(np.abs(h).max()), 1e-12)
    colours = matplotlib.colormaps[cmap](h)[..., :3]
    grey = viz.to_display(image).mean(-1, keepdims=True)
    return 0.3 * grey + 0.7 * colours


class PhotoInpainter:
    """One photo, a hole drawn by strokes, the model's fill and its attention (see the module docstring).

    Args:
        generator: an :class:`~csa_lib.inference.InpaintModel` (``load_model``: it brings its
            pre-processing), or a :class:`~csa_lib.networks.CSAInpainter` in eval mode.
        preprocessing: with a bare generator: ``{image_size, resize, crop_top}`` (a model card's
            ``preprocessing``, or :func:`csa_lib.inference.checkpoint_preprocessing`), or the training
            size as an int.
        photos: ``{name: PIL image}`` to start with (e.g. the embedded samples).
        scale: display pixels per network pixel (default: about 192 px wide canvases).
        brush: brush radius in network pixels (default 4: a stroke as wide as one cell of the CSA
            layer's 1/8 grid, so every stroke makes hole positions there).
    """

    def __init__(self, generator, preprocessing: dict | int | None = None, photos: dict | None = None,
                 scale: int | None = None, brush: float = 4.0):
        if isinstance(generator, InpaintModel):
            generator, preprocessing = generator.generator, preprocessing or generator.preprocessing
        if preprocessing is None:
            raise ValueError("PhotoInpainter needs the generator's preprocessing (a model card's, or its "
                             "training size); an InpaintModel from csa_lib.inference.load_model brings it")
        self.G = generator
        self.pre = {"image_size": preprocessing} if isinstance(preprocessing, int) else dict(preprocessing)
        self.S = int(self.pre["image_size"])
        self.scale = scale or max(1, round(192 / self.S))  # four panels of ~192 px fit a notebook
        self.brush = brush
        self.photos: dict[str, torch.Tensor] = {}
        self.name: str | None = None
        self.image = torch.zeros(3, self.S, self.S)
        self.mask = torch.zeros(1, self.S, self.S)
        self.result: dict | None = None   # fill, composite, attention, seconds
        self.picked: dict | None = None   # the last pick(): cell, source, weight, heat
        self.missed: tuple[int, int] | None = None  # a picked cell that is known at the feature grid
        for name, img in (photos or {}).items():
            self.add_photo(name, img, select=False)  # the first photo stays selected

    # ----------------------------------------------------------------------------------------------
    # photos and strokes
    # ----------------------------------------------------------------------------------------------
    def add_photo(self, name: str, img: Image.Image, select: bool = True) -> None:
        """Add a PIL photo, prepared as the model was trained (crop and resize to ``S``), EXIF applied."""
        img = ImageOps.exif_transpose(img).convert("RGB")
        self.photos[name] = to_tensor(prepare_image(img, self.S, self.pre.get("resize", "square"),
                                                    self.pre.get("crop_top")))
        if select or self.name is None:
            self.select(name)

    def add_photo_bytes(self, name: str, data: bytes) -> None:
        """Add a photo from the bytes of an image file (an upload)."""
        try:
            img = Image.open(io.BytesIO(bytes(data)))
            img.load()
        except Exception as e:  # PIL raises many types for bad files
            raise ValueError(f"cannot read {name} as an image: {e}") from None
        self.add_photo(name, img)

    def select(self, name: str) -> None:
        """Work on photo ``name``; the hole is kept, the result and the pick are cleared."""
        self.name, self.image = name, self.photos[name]
        self.result = self.picked = None

    def clear(self) -> None:
        """Remove the hole (and the result)."""
        self.mask.zero_()
        self.result = self.picked = None

    def draw_stroke(self, points: Sequence[tuple[float, float]], radius: float | None = None) -> None:
        """Paint a brush stroke into the hole: discs of ``radius`` (network pixels) along the polyline
        through ``points`` ``(y, x)`` (network pixels, floats allowed)."""
        r = self.brush if radius is None else radius
        yy, xx = torch.meshgrid(torch.arange(self.S) + 0.5, torch.arange(self.S) + 0.5, indexing="ij")
        pts = [tuple(map(float, p)) for p in points]
        for (y0, x0), (y1, x1) in zip(pts, pts[1:] or pts):
            n = max(1, int(np.ceil(np.hypot(y1 - y0, x1 - x0) / 0.5)))  # a disc every half pixel
            for k in range(n + 1):
                cy, cx = y0 + (y1 - y0) * k / n, x0 + (x1 - x0) * k / n
                self.mask[0][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1.0
        self.result = self.picked = None

    # ----------------------------------------------------------------------------------------------
    # the model
    # ----------------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Fill the hole: ``{"fill": raw output [3,S,S], "composite": [3,S,S], "attention", "seconds"}``.

        The composite takes the fill inside the hole and the photo everywhere else (bit-exact)."""
        if not self.mask.any():
            raise ValueError("draw a hole first: the mask is empty")
        device = next(self.G.parameters()).device
        t0 = time.perf_counter()
        out, _, _ = run_with_attention_input(self.G, self.image[None].to(device), self.mask[None].to(device))
        fill = out.refined[0].float().cpu().clamp(-1, 1)
        self.result = {"fill": fill, "composite": self.image * (1 - self.mask) + fill * self.mask,
                       "attention": out.attention, "seconds": time.perf_counter() - t0}
        self.picked = self.missed = None
        return self.result

    def pick(self, y: float, x: float) -> dict | None:
        """Where the hole position under image pixel ``(y, x)`` took its feature from.

        Returns None for a known position, else ``{"cell", "source"`` (feature cells ``(y, x)``),
        ``"weight"`` (the row's weight on its own source, ``b_t``), ``"t"`` (chain step), ``"stride"``,
        ``"heat"`` (``[S, S]`` attention row over the image, sums to 1)``}``."""
        if self.result is None:
            raise ValueError("run() first: there is no attention to look at")
        att = self.result["attention"]
        h, w = att.size
        sy, sx = self.S // h, self.S // w
        cy, cx = min(h - 1, max(0, int(y // sy))), min(w - 1, max(0, int(x // sx)))
        t = hole_step(att, 0, cy, cx)
        self.missed = None if t is not None else (cy, cx)
        if t is None:
            self.picked = None
            return None
        me = chain_predecessors(att, 0, t, k=0)[0]
        self.picked = {"cell": me["pos"], "source": me["source"], "weight": me["weight"], "t": t,
                       "stride": (sy, sx), "heat": attention_heatmap(att, 0, t, (self.S, self.S))}
        return self.picked

    def describe(self) -> str:
        """One line on the current state (what the widget's status shows)."""
        if self.result is None:
            return f"{self.name}: hole {float(self.mask.mean()):.0%} of the image; draw, then release to fill"
        msg = (f"{self.name}: filled {int(self.mask.sum())} px ({float(self.mask.mean()):.0%}) in "
               f"{self.result['seconds']:.2f} s; click a hole position on the composite")
        if self.missed is not None:
            msg = (f"cell {self.missed} is a known position on the CSA layer's 1/8-resolution grid (a cell "
                   "is a hole only when the hole covers enough of it): click in the thick of the hole")
        if self.picked is not None:
            p = self.picked
            msg = (f"hole cell {p['cell']} (chain step {p['t']}) <- source cell {p['source']}, "
                   f"own-source weight {p['weight']:.2f}")
        return msg

    # ----------------------------------------------------------------------------------------------
    # static figure
    # ----------------------------------------------------------------------------------------------
    def figure(self):
        """input (hole in white) | fill | composite (with the picked offset arrow) | attention heat map."""
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 4, figsize=(11, 3))
        axes[0].imshow(viz.masked_display(self.image, self.mask))
        axes[0].set_title(f"input: {self.name}", fontsize=9)
        if self.result is not None:
            axes[1].imshow(viz.to_display(self.result["fill"]))
            axes[2].imshow(viz.to_display(self.result["composite"]))
        axes[1].set_title("fill (raw output)", fontsize=9)
        axes[2].set_title("composite", fontsize=9)
        if self.picked is not None:
            p = self.picked
            (x0, y0), (x1, y1) = (viz.cell_centre(*c, p["stride"]) for c in (p["cell"], p["source"]))
            axes[2].annotate("", xy=(x1, y1), xytext=(x0, y0),
                             arrowprops={"arrowstyle": "->", "color": "yellow", "lw": 1.5})
            axes[2].add_patch(viz.cell_rect(*p["cell"], p["stride"], edgecolor="cyan", lw=1.5))
            axes[2].add_patch(viz.cell_rect(*p["source"], p["stride"], edgecolor="lime", lw=1.5))
            axes[3].imshow(heat_overlay(self.image, p["heat"]))
            axes[3].set_title(f"attention row of cell {p['cell']}", fontsize=9)
        else:
            axes[3].set_title("attention: pick a hole position", fontsize=9)
        for ax in axes:
            ax.set_axis_off()
        fig.tight_layout()
        return fig

    # ----------------------------------------------------------------------------------------------
    # widget
    # ----------------------------------------------------------------------------------------------
    def widget(self):
        """The interactive version (ipycanvas + ipywidgets); see :class:`PhotoWidget`. Without them a
        ``ModuleNotFoundError`` whose message is one sentence saying how to get them."""
        return PhotoWidget(self).box


#: What a notebook prints where the drawing widget cannot run (``PhotoInpainter.widget``).
NO_WIDGET = ("The drawing widget needs ipycanvas and ipywidgets, which are not installed here: "
             "pip install -e \".[widgets]\" (or make lab, for JupyterLab with them), then run this cell "
             "in JupyterLab or Colab; the static example below shows the same steps.")


class PhotoWidget:
    """Mouse-driven front end of a :class:`PhotoInpainter` (built by :meth:`PhotoInpainter.widget`).

    Left to right: *draw* (the photo; drag to paint the hole, red), *fill* (the raw output), *composite*
    (click a hole position: yellow arrow to its source), *attention* (the row of the clicked position
    as a heat map). Above: photo choice, an upload button, brush size, Fill and Clear buttons. The hole
    is filled when the mouse button is released. CSS classes ``csa-draw``, ``csa-fill``,
    ``csa-composite``, ``csa-attention``, ``csa-status``, ``csa-run`` name the parts (the browser
    test finds them by these).
    """

    def __init__(self, app: PhotoInpainter):
        try:
            import ipywidgets as widgets
            from ipycanvas import Canvas
        except ImportError:
            raise ModuleNotFoundError(NO_WIDGET) from None

        self.app = app
        size = app.S * app.scale
        self.canvases = {}
        for name in ("draw", "fill", "composite", "attention"):
            c = Canvas(width=size, height=size, layout=widgets.Layout(width=f"{size}px", height=f"{size}px"))
            c.add_class(f"csa-{name}")
            self.canvases[name] = c
        titles = [widgets.HTML(f"<b>{t}</b>", layout=widgets.Layout(width=f"{size}px"))
                  for t in ("draw the hole", "fill", "composite: click a hole", "attention")]
        self.choice = widgets.Dropdown(options=list(app.photos), value=app.name, description="photo")
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="your photo")
        self.brush = widgets.FloatSlider(value=app.brush, min=1, max=8, step=0.5, description="brush")
        self.run_button = widgets.Button(description="Fill", button_style="primary")
        self.run_button.add_class("csa-run")
        self.clear_button = widgets.Button(description="Clear")
        self.status = widgets.HTML()
        self.status.add_class("csa-status")
        self.box = widgets.VBox([
            widgets.HBox([self.choice, self.upload, self.brush, self.run_button, self.clear_button]),
            widgets.HBox(titles), widgets.HBox(list(self.canvases.values())), self.status])
        self._last: tuple[float, float] | None = None

        draw = self.canvases["draw"]
        draw.on_mouse_down(self._down)
        draw.on_mouse_move(self._move)
        draw.on_mouse_up(self._up)
        draw.on_mouse_out(self._up)
        self.canvases["composite"].on_mouse_down(self._pick)
        self.choice.observe(self._choose, names="value")
        self.upload.observe(self._uploaded, names="value")
        self.brush.observe(lambda ch: setattr(app, "brush", ch["new"]), names="value")
        self.run_button.on_click(lambda _: self._fill())
        self.clear_button.on_click(lambda _: (app.clear(), self.render()))
        self.render()

    # events (x, y in canvas pixels) -----------------------------------------------------------------
    def _down(self, x, y):
        self._last = (y / self.app.scale, x / self.app.scale)
        self._paint([self._last])

    def _move(self, x, y):
        if self._last is not None:
            p = (y / self.app.scale, x / self.app.scale)
            self._paint([self._last, p])
            self._last = p

    def _up(self, x, y):
        if self._last is not None:
            self._last = None
            self._fill()

    def _paint(self, points):
        """Paint into the mask and, cheaply, onto the draw canvas (no full redraw while dragging)."""
        self.app.draw_stroke(points)
        c, s = self.canvases["draw"], self.app.scale
        c.fill_style = c.stroke_style = "rgba(255, 0, 0, 0.8)"
        c.line_width, c.line_cap = 2 * self.app.brush * s, "round"
        (y0, x0), (y1, x1) = points[0], points[-1]
        c.stroke_line(x0 * s, y0 * s, x1 * s, y1 * s)
        c.fill_circle(x1 * s, y1 * s, self.app.brush * s)

    def _fill(self):
        try:
            self.app.run()
        except ValueError as e:  # an empty hole: say so, do not fail
            self.status.value = str(e)
            return
        self.render()

    def _pick(self, x, y):
        if self.app.result is not None:
            self.app.pick(y / self.app.scale, x / self.app.scale)
            self.render()

    def _choose(self, change):
        self.app.select(change["new"])
        self.render()

    def _uploaded(self, change):
        files = change["new"]
        if not files:
            return
        f = files[0] if isinstance(files, (tuple, list)) else next(iter(files.values()))  # ipywidgets 8 / 7
        try:
            self.app.add_photo_bytes(f["name"], f["content"])
        except ValueError as e:
            self.status.value = str(e)
            return
        self.choice.options = list(self.app.photos)
        self.choice.value = f["name"]
        self.render()

    # drawing ----------------------------------------------------------------------------------------
    def render(self):
        """Redraw all four canvases from the app's state."""
        from ipycanvas import hold_canvas

        app, s = self.app, self.app.scale
        shown = viz.masked_display(app.image, app.mask, fill=1.0)
        hole = app.mask[0].numpy() > 0
        shown[hole] = (1.0, 0.15, 0.15)  # the hole in red
        blank = np.full((app.S * s, app.S * s, 3), 235, np.uint8)
        with hold_canvas():
            self.canvases["draw"].put_image_data((shown * 255).round().astype(np.uint8).repeat(s, 0).repeat(s, 1))
            res = app.result
            self.canvases["fill"].put_image_data(_rgb(res["fill"], s) if res else blank)
            comp = self.canvases["composite"]
            comp.put_image_data(_rgb(res["composite"], s) if res else blank)
            att = self.canvases["attention"]
            if app.picked is not None:
                p = app.picked
                heat = (heat_overlay(app.image, p["heat"]) * 255).round().astype(np.uint8)
                att.put_image_data(heat.repeat(s, 0).repeat(s, 1))
                (x0, y0), (x1, y1) = (viz.cell_centre(*c, p["stride"]) for c in (p["cell"], p["source"]))
                sy, sx = p["stride"]
                comp.line_width, comp.stroke_style = 2, "cyan"
                comp.stroke_rect(p["cell"][1] * sx * s, p["cell"][0] * sy * s, sx * s, sy * s)
                comp.stroke_style = "lime"
                comp.stroke_rect(p["source"][1] * sx * s, p["source"][0] * sy * s, sx * s, sy * s)
                comp.stroke_style = comp.fill_style = "yellow"
                comp.stroke_line((x0 + 0.5) * s, (y0 + 0.5) * s, (x1 + 0.5) * s, (y1 + 0.5) * s)
                comp.fill_circle((x1 + 0.5) * s, (y1 + 0.5) * s, 3)
            else:
                att.put_image_data(blank)
        self.status.value = app.describe()
