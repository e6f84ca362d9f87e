"""A deterministic synthetic chest-radiograph-like dataset in the PNG layout, so the demo exercises the real loader.

Each image is drawn from a seeded generator: a bright torso with two dark lung fields, heart and mediastinum,
posterior ribs crossing the lungs, branching lung markings that fade from the hila to the periphery, soft noise.
A pneumothorax is a region along the pleural border (lateral or apical) where lung markings are missing and the
field is darker, bounded by a faint thin pleural line — not a bright blob. Lesion sizes are log-normal from a few
pixels to ~15% of the image (median ~0.8%, as in SIIM), some images have two regions, ~22% of images are positive.

Drawing by hand because no library generates radiograph-like phantoms; cv2 does the filtering and rasterising.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

POSITIVE_FRACTION = 0.22
MEDIAN_LESION_FRACTION = 0.008  # of the image area, as SIIM's median lesion
MIN_LESION_FRACTION, MAX_LESION_FRACTION = 5e-5, 0.15


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    noise = rng.standard_normal((size, size)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma)
    return noise / (noise.std() + 1e-6)


def _lung_masks(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, list[tuple[float, float]]]:
    """Two lung fields (uint8 0/1 each) as rounded polygons, and their hilum points (x, y) in pixels."""
    s = size
    lungs, hila = [], []
    for side in (-1, 1):  # -1: patient's right (image left), +1: patient's left (image right)
        cx = s * (0.5 + side * rng.uniform(0.2, 0.23))
        top, bottom = s * rng.uniform(0.1, 0.16), s * rng.uniform(0.74, 0.84)
        half_width = s * rng.uniform(0.14, 0.17)
        inner_shift = s * (0.05 if side == 1 else 0.02)  # heart narrows the left lung's medial base
        points = [
            (cx, top),
            (cx + side * half_width * 0.8, top + s * 0.06),
            (cx + side * half_width * 1.05, (top + bottom) / 2),
            (cx + side * half_width, bottom),
            (cx - side * (half_width * 0.45 - inner_shift), bottom - s * 0.02),
            (cx - side * half_width * 0.7, (top + bottom) / 2),
            (cx - side * half_width * 0.45, top + s * 0.05),
        ]
        mask = np.zeros((s, s), np.uint8)
        cv2.fillPoly(mask, [np.round(np.array(points)).astype(np.int32)], 1)
        mask = (cv2.GaussianBlur(mask.astype(np.float32), (0, 0), s / 40) > 0.5).astype(np.uint8)
        lungs.append(mask)
        hila.append((cx - side * half_width * 0.45, (top + bottom) / 2))
    return lungs[0], lungs[1], hila


def _lung_markings(rng: np.random.Generator, size: int, hila: list[tuple[float, float]]) -> np.ndarray:
    """Branching vessel-like lines radiating from the hila, brighter and denser near them. float [S, S] in [0, 1]."""
    canvas = np.zeros((size, size), np.float32)
    for hx, hy in hila:
        for _ in range(16):
            angle = rng.uniform(0, 2 * np.pi)
            x, y, width, strength = hx, hy, max(size / 110, 1.0), 1.0
            for _ in range(int(rng.integers(8, 16))):
                angle += rng.normal(0, 0.35)
                step = size * rng.uniform(0.015, 0.03)
                nx, ny = x + step * np.cos(angle), y + step * np.sin(angle)
                cv2.line(canvas, (int(x), int(y)), (int(nx), int(ny)), strength, max(int(round(width)), 1), cv2.LINE_AA)
                if rng.random() < 0.25:  # a side branch
                    ba = angle + rng.choice([-1, 1]) * rng.uniform(0.4, 0.9)
                    bx, by = nx + step * np.cos(ba), ny + step * np.sin(ba)
                    cv2.line(canvas, (int(nx), int(ny)), (int(bx), int(by)), strength * 0.7, 1, cv2.LINE_AA)
                x, y, width, strength = nx, ny, width * 0.92, strength * 0.93
    return cv2.GaussianBlur(canvas, (0, 0), 0.6)


def _ribs(rng: np.random.Generator, size: int) -> np.ndarray:
    """Posterior rib shadows: curved bands, float [S, S] in [0, 1]."""
    canvas = np.zeros((size, size), np.float32)
    xs = np.arange(size)
    thickness = max(int(size / 55), 1)
    for side in (-1, 1):
        cx = size * (0.5 + side * 0.19)
        for k in range(9):
            y0 = size * (0.16 + k * 0.075) + rng.normal(0, size * 0.004)
            ys = y0 + size * 0.09 * ((xs - size / 2) * side / (size * 0.35)).clip(-0.2, 1.2) ** 2
            keep = np.abs(xs - cx) < size * 0.2
            points = np.stack([xs[keep], ys[keep]], 1).round().astype(np.int32)
            cv2.polylines(canvas, [points], False, 1.0, thickness, cv2.LINE_AA)
    return cv2.GaussianBlur(canvas, (0, 0), size / 300 + 0.5)


def _pneumothorax(rng: np.random.Generator, lung: np.ndarray, target_pixels: float) -> np.ndarray:
    """A region of ``lung`` along its lateral/apical border of about ``target_pixels`` pixels; uint8 0/1."""
    inside = cv2.distanceTransform(lung, cv2.DIST_L2, 5)
    ys, xs = np.nonzero(lung)
    cy, cx = ys.mean(), xs.mean()
    angle = np.arctan2(np.arange(lung.shape[0])[:, None] - cy, np.arange(lung.shape[1])[None, :] - cx)
    lateral = -np.pi if cx < lung.shape[1] / 2 else 0.0  # image-left lung's lateral side faces angle pi
    centre = lateral + rng.uniform(-0.9, 0.4) * (1 if lateral == 0 else -1)  # lateral to apical
    delta = np.angle(np.exp(1j * (angle - centre)))
    lung_pixels = lung.sum()
    fraction = min(target_pixels / lung_pixels, 0.6)
    half_arc = np.clip(np.pi * (0.15 + 1.2 * fraction**0.5), 0.12, 1.6)
    # depth (px) tapers to zero at the ends of the arc, so the edge is a smooth curve, as a collapsed lung's
    taper = np.clip(1 - (delta / half_arc) ** 2, 0, 1)
    depth = 1.0
    for _ in range(30):  # widen the band until it holds about target_pixels
        region = (inside > 0) & (inside <= depth * taper)
        if region.sum() >= target_pixels or depth > inside.max():
            break
        depth *= 1.25
    return region.astype(np.uint8)


def synthetic_radiograph(seed: int, size: int = 256, positive: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and mask: uint8 [size, size] gray, uint8 [size, size] 0/255 pneumothorax."""
    rng = np.random.default_rng(seed)
    s = size
    if positive is None:
        positive = rng.random() < POSITIVE_FRACTION
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    torso = (((xx - s / 2) / (s * 0.44)) ** 2 + ((yy - s * 0.62) / (s * 0.62)) ** 2 < 1).astype(np.float32)
    torso = cv2.GaussianBlur(torso, (0, 0), s / 25)
    right_lung, left_lung, hila = _lung_masks(rng, s)
    lungs = np.maximum(right_lung, left_lung).astype(np.float32)
    heart = (((xx - s * 0.55) / (s * 0.16)) ** 2 + ((yy - s * 0.66) / (s * 0.13)) ** 2 < 1).astype(np.float32)
    mediastinum = ((np.abs(xx - s / 2) < s * 0.07) & (yy > s * 0.1)).astype(np.float32)
    soft = cv2.GaussianBlur(np.maximum(heart, mediastinum), (0, 0), s / 60)

    mask = np.zeros((s, s), np.uint8)
    if positive:
        fraction = np.exp(rng.normal(np.log(MEDIAN_LESION_FRACTION), 1.5))
        fraction = float(np.clip(fraction, MIN_LESION_FRACTION, MAX_LESION_FRACTION))
        regions = 2 if rng.random() < 0.2 else 1
        lungs_hit = [right_lung, left_lung]
        rng.shuffle(lungs_hit)
        for lung in lungs_hit[:regions]:
            mask |= _pneumothorax(rng, lung, fraction * s * s / regions)

    markings = _lung_markings(rng, s, hila) * lungs * (1 - mask)
    lung_field = cv2.GaussianBlur(lungs * (1 - 0.35 * soft), (0, 0), s / 100)
    image = 15 + 125 * torso  # soft tissue
    image -= 85 * lung_field * (0.9 + 0.1 * _smooth_noise(rng, s, s / 30))  # aerated lungs are dark
    image += 95 * soft * torso
    image += 38 * markings
    image += 22 * _ribs(rng, s) * torso
    if mask.any():  # a collapsed margin: no markings, darker, a faint pleural line on its inner edge
        pleura = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) * (1 - mask) * right_lung
        pleura |= cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) * (1 - mask) * left_lung
        image -= 30 * cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.8)
        image += 30 * cv2.GaussianBlur(pleura.astype(np.float32), (0, 0), 0.6)
    image += 3 * _smooth_noise(rng, s, 1.0) + 2.5 * rng.standard_normal((s, s))
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 0.5)
    return np.clip(image, 0, 255).astype(np.uint8), mask * 255


def make_demo_data(out: str | os.PathLike, num_images: int = 400, size: int = 256, seed: int = 0) -> Path:
    """Write ``num_images`` synthetic pairs to ``OUT/images/train`` and ``OUT/masks/train`` (plus labels.json).

    Written into a temporary folder beside ``out`` and renamed at the end, so ``out`` is complete or absent.
    ``out`` must not exist yet. Returns ``out``.
    """
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; remove it or choose another --out.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for sub in ("images/train", "masks/train"):
            (tmp / sub).mkdir(parents=True)
        for i in tqdm(range(num_images), desc="Drawing demo radiographs", unit="img"):
            image, mask = synthetic_radiograph(seed * 1_000_003 + i, size)
            image_id = f"demo_{i:05d}"
            cv2.imwrite(str(tmp / "images/train" / f"{image_id}.png"), image)
            cv2.imwrite(str(tmp / "masks/train" / f"{image_id}.png"), mask)
        (tmp / "labels.json").write_text(json.dumps({"task": "pneumothorax"}))
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
