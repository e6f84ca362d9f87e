"""Every picture cxrseg draws: mask overlays (numpy/OpenCV) and matplotlib figures (Agg, written as PNG).

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, so no global backend switch in
a user's session) and saved without tight bounding boxes, so a PNG is exactly ``figsize * dpi`` pixels. Files are
written atomically (temporary file, then rename).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from cxrseg.files import atomic_write_bytes

SINGLE_CLASS_COLOUR = (230, 40, 40)
"""RGB of the finding of a single-foreground model (red)."""


FIGURE_SOFTWARE = "cxrseg"
"""The PNG ``Software`` text of every figure cxrseg saves: how it recognises its own pictures (to replace them)."""


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Render ``fig`` with Agg and write it as a PNG of exactly ``figsize * dpi`` pixels, atomically."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi, metadata={"Software": FIGURE_SOFTWARE})
    return atomic_write_bytes(path, buffer.getvalue())


def is_cxrseg_figure(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a PNG figure that :func:`save_figure` wrote."""
    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.info.get("Software") == FIGURE_SOFTWARE
    except (OSError, ValueError):
        return False


def class_colours(num_classes: int) -> np.ndarray:
    """uint8 RGB [num_classes, 3]: red for a single class, else matplotlib's tab10/tab20 colours."""
    if num_classes == 1:
        return np.array([SINGLE_CLASS_COLOUR], dtype=np.uint8)
    cmap = colormaps["tab10" if num_classes <= 10 else "tab20"]
    return np.array([[round(255 * c) for c in cmap(i % cmap.N)[:3]] for i in range(num_classes)], dtype=np.uint8)


def overlay(
    image: np.ndarray,
    masks: np.ndarray,
    colours: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    alpha: float = 0.35,
) -> np.ndarray:
    """The image with each mask filled translucent and outlined in its class colour.

    image: uint8 gray [H, W]. masks: [K, H, W] (non-zero = on). colours: uint8 RGB [K, 3] (default
    :func:`class_colours`). names: when given, a legend of the classes present is drawn in the top-left corner.
    Returns uint8 RGB [H, W, 3]; without a legend it differs from the gray image exactly where a mask is on (the
    outline is the mask's inner border, ``max(1, min(H, W) // 256)`` pixels thick).
    """
    masks = np.asarray(masks) != 0
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise ValueError(f"overlay: masks {masks.shape} must be [K, H, W] with H, W of the image {image.shape}.")
    colours = class_colours(masks.shape[0]) if colours is None else np.asarray(colours, dtype=np.uint8)
    out = np.repeat(image[..., None], 3, axis=2).astype(np.float32)
    thickness = max(1, min(image.shape[:2]) // 256)
    kernel = np.ones((3, 3), np.uint8)
    for mask, colour in zip(masks, colours.astype(np.float32)):
        if not mask.any():
            continue
        out[mask] = out[mask] * (1 - alpha) + colour * alpha
        inner = cv2.erode(mask.astype(np.uint8), kernel, iterations=thickness).astype(bool)
        out[mask & ~inner] = colour
    out = np.rint(out).astype(np.uint8)
    if names is not None:
        present = [(name, colour) for name, colour, mask in zip(names, colours, masks) if mask.any()]
        _draw_legend(out, present)
    return out


def probability_image(probs: np.ndarray, colormap: str = "magma") -> np.ndarray:
    """float [K, H, W] in [0, 1] → uint8 RGB [H, W, 3]: each pixel's highest probability over the K classes in
    ``colormap`` (magma: black at 0, pale yellow at 1)."""
    peak = np.asarray(probs, dtype=np.float32).max(0).clip(0, 1)
    return colormaps[colormap](peak, bytes=True)[..., :3]


def _draw_legend(canvas: np.ndarray, entries: Sequence[tuple[str, np.ndarray]]) -> None:
    """Colour swatches and class names in a dark box in the top-left corner of an RGB image (in place)."""
    if not entries:
        return
    scale = max(0.35, min(canvas.shape[:2]) / 1024)
    font, weight = cv2.FONT_HERSHEY_SIMPLEX, max(1, round(scale * 1.5))
    line = round(28 * scale)
    width = max(cv2.getTextSize(name, font, scale, weight)[0][0] for name, _ in entries) + 3 * line // 2 + 8
    height = line * len(entries) + 8
    box = canvas[:height, :width]
    box[:] = (box * 0.3).astype(np.uint8)
    for i, (name, colour) in enumerate(entries):
        top = 4 + i * line
        cv2.rectangle(canvas, (4, top + 2), (4 + line - 6, top + line - 4), tuple(int(c) for c in colour), -1)
        cv2.putText(canvas, name, (line + 4, top + line - 6), font, scale, (255, 255, 255), weight, cv2.LINE_AA)


# --------------------------------------------------------------------------- precision-recall


@dataclass
class PRCurve:
    """One class's pixel precision-recall curve (``SegmentationMetrics.pr_curve`` convention) and its AP."""

    name: str
    precision: np.ndarray
    recall: np.ndarray
    thresholds: np.ndarray
    ap: float


def best_f1_point(curve: PRCurve) -> tuple[float, float, float, float]:
    """(f1, precision, recall, threshold) of the curve point with the highest F1 = 2PR / (P + R)
    (ties: the highest threshold, as ``SegmentationMetrics.best_threshold``)."""
    precision, recall = curve.precision[:-1], curve.recall[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = len(f1) - 1 - int(np.argmax(f1[::-1]))
    return float(f1[best]), float(precision[best]), float(recall[best]), float(curve.thresholds[best])


def plot_pr_curve(curves: Sequence[PRCurve], path: str | os.PathLike, title: str = "Pixel precision-recall") -> Path:
    """Precision against recall, one line per class, AP in the legend and the best-F1 point marked. 800x640 px."""
    fig = Figure(figsize=(6.25, 5), dpi=128)
    ax = fig.add_subplot()
    colours = class_colours(len(curves)) / 255
    for curve, colour in zip(curves, colours):
        ap = "n/a" if curve.ap is None or math.isnan(curve.ap) else f"{curve.ap:.3f}"
        ax.step(curve.recall, curve.precision, where="post", color=colour, label=f"{curve.name} (AP {ap})")
        if len(curve.thresholds) and curve.recall[0] > 0:
            f1, precision, recall, threshold = best_f1_point(curve)
            ax.plot(
                recall,
                precision,
                "o",
                color=colour,
                markeredgecolor="black",
                markersize=7,
                label=f"best F1 {f1:.3f} at p ≥ {threshold:.3f}",
            )
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------- training curves

CURVE_PANELS = (
    ("Loss", ("loss", "eval_loss"), None),
    ("Dice", ("eval_dice", "eval_kaggle_dice", "eval_prior_mask_dice"), (0, 1)),  # with the prior-mask baseline
    ("Ranking", ("eval_ap", "eval_best_f1"), (0, 1)),
)
"""Panels of :func:`plot_training_curves`: title, the ``log_history`` keys drawn in it, y range (None: auto)."""


def plot_training_curves(log_history: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Loss, validation Dice / Kaggle Dice and AP / best F1 against the optimizer step, from a Trainer's
    ``state.log_history`` (``trainer_state.json``). 1200x400 px. Keys absent from the log are left out."""
    series = {
        key: [(row["step"], row[key]) for row in log_history if key in row and "step" in row]
        for _, keys, _ in CURVE_PANELS
        for key in keys
    }
    if not any(series.values()):
        raise ValueError("The training log has no loss or evaluation entries to plot.")
    fig = Figure(figsize=(12, 4), dpi=100)
    axes = fig.subplots(1, len(CURVE_PANELS))
    for ax, (panel, keys, limits) in zip(axes, CURVE_PANELS):
        for key in keys:
            points = series[key]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=key)
        if ax.lines:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set(title=panel, xlabel="step")
        if limits is not None:
            ax.set_ylim(*limits)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------- predictions


@dataclass
class PredictionExample:
    """One row of :func:`plot_prediction_grid`, all at the working size (S x S).

    image: uint8 gray [S, S]; truth: uint8 [K, S, S] 0/1 (IGNORE_INDEX pixels shown as 0); probs: float32
    [K, S, S]; pred: uint8 [K, S, S] 0/1; category: "true positive", "miss", "false positive" or "true negative".
    """

    image_id: str
    image: np.ndarray
    truth: np.ndarray
    probs: np.ndarray
    pred: np.ndarray
    dice: float
    category: str


def _colour_masks(masks: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """uint8 RGB [S, S, 3]: black with each class's pixels in its colour (white for a single class)."""
    canvas = np.zeros((*masks.shape[1:], 3), dtype=np.uint8)
    if masks.shape[0] == 1:
        canvas[masks[0] == 1] = 255
        return canvas
    for mask, colour in zip(masks, colours):
        canvas[mask == 1] = colour
    return canvas


def plot_prediction_grid(
    examples: Sequence[PredictionExample], path: str | os.PathLike, names: Sequence[str], title: str = ""
) -> Path:
    """One row per example: input | truth | predicted probability (outline: predicted mask) | overlay (fill:
    prediction, green outline: truth), the row titled with the image id, its category and Dice.
    Size: 4 columns x len(examples) rows of 2 in at 80 dpi (640 x (160 n + 60) px)."""
    if not examples:
        raise ValueError("plot_prediction_grid needs at least one example.")
    colours = class_colours(len(names))
    fig = Figure(figsize=(8, 2 * len(examples) + 0.75), dpi=80)
    axes = fig.subplots(len(examples), 4, squeeze=False)
    for row, example in zip(axes, examples):
        truth = (example.truth == 1).astype(np.uint8)
        row[0].imshow(example.image, cmap="gray", vmin=0, vmax=255)
        row[0].set_title(f"{example.image_id}\n{example.category}, Dice {example.dice:.2f}", fontsize=8)
        row[1].imshow(_colour_masks(truth, colours))
        row[1].set_title("truth", fontsize=8)
        row[2].imshow(example.probs.max(0), cmap="magma", vmin=0, vmax=1)
        if example.pred.any():
            row[2].contour(example.pred.max(0), levels=[0.5], colors="cyan", linewidths=0.8)
        row[2].set_title("probability (cyan: mask)", fontsize=8)
        row[3].imshow(overlay(example.image, example.pred, colours))
        if truth.any():
            row[3].contour(truth.max(0), levels=[0.5], colors="lime", linewidths=0.8)
        row[3].set_title("prediction, truth in green", fontsize=8)
        for ax in row:
            ax.set_axis_off()
    legend = ", ".join(f"{name}" for name in names) if len(names) > 1 else names[0]
    fig.suptitle(title or f"Predictions ({legend})", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (2 * len(examples) + 0.75)))
    return save_figure(fig, path)


# --------------------------------------------------------------------------- feature maps


def plot_feature_maps(
    image: np.ndarray,
    features: Sequence[tuple[str, np.ndarray]],
    probs: np.ndarray,
    path: str | os.PathLike,
    top: int = 6,
    title: str = "",
) -> Path:
    """Feature maps of one image: a first row with the input and the predicted probability, then one row per layer
    with the mean over channels and the ``top`` channels of highest mean activation (each panel scaled to its own
    range). image: uint8 gray [S, S]; features: (name, float [C, h, w]); probs: float [K, S, S].
    Size: (top + 1) columns x (len(features) + 1) rows of 1.6 in at 80 dpi."""
    columns, rows = top + 1, len(features) + 1
    fig = Figure(figsize=(1.6 * columns, 1.6 * rows + 0.4), dpi=80)
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    axes[0, 0].imshow(image, cmap="gray", vmin=0, vmax=255)
    axes[0, 0].set_title("input", fontsize=8)
    axes[0, 1].imshow(np.asarray(probs).max(0), cmap="magma", vmin=0, vmax=1)
    axes[0, 1].set_title("probability", fontsize=8)
    for row, (name, value) in zip(axes[1:], features):
        value = np.asarray(value, dtype=np.float32)
        row[0].imshow(value.mean(0), cmap="viridis")
        row[0].set_title(f"{name}\nmean of {value.shape[0]}, {value.shape[1]}x{value.shape[2]}", fontsize=7)
        ranked = np.argsort(-value.mean((1, 2)), kind="stable")[:top]
        for ax, channel in zip(row[1:], ranked):
            ax.imshow(value[channel], cmap="viridis")
            ax.set_title(f"channel {channel}", fontsize=7)
    fig.suptitle(title or "Feature maps (mean and most active channels)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (1.6 * rows + 0.4)))
    return save_figure(fig, path)
