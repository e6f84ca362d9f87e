"""A deterministic synthetic chest-radiograph-like dataset in the PNG layout, so the demo exercises the real loader.

Each image is drawn from a seeded generator: a bright torso with two dark lung fields, heart and mediastinum,
posterior ribs crossing the lungs, branching lung markings that fade from the hila to the periphery, soft noise.
A pneumothorax is a region along the pleural border (lateral or apical) where lung markings are missing and the
field is darker, bounded by a faint thin pleural line — not a bright blob. Lesion sizes are log-normal from a few
pixels to ~15% of the image (median ~0.8%, as in SIIM), some images have two regions, ~22% of images are positive.

:func:`make_multilabel_demo_data` draws the ChestX-Det-like multi-label variant on the same anatomy: an enlarged
heart (Cardiomegaly), basal effusions with a meniscus, masses and nodules, and the same pneumothorax, overlapping.
:func:`synthetic_anatomy_radiograph` labels the anatomy itself (lung fields and heart, as JSRT/SCR or Montgomery
do), with patients placed, sized and tilted differently so that a fixed prior mask is a fair but beatable baseline.

Drawing by hand because no library generates radiograph-like phantoms; cv2 does the filtering and rasterising.
"""

from __future__ import annotations

import cv2
import numpy as np

from cxrseg.labels import CHESTXDET_CLASSES

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


def _heart(size: int, width_scale: float = 1.0, height_scale: float = 1.0) -> np.ndarray:
    """The heart shadow: an ellipse low in the chest, left of the midline; float32 0/1 [S, S]. Scales enlarge it."""
    s = size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    rx, ry = s * 0.16 * width_scale, s * 0.13 * height_scale
    return (((xx - s * 0.55) / rx) ** 2 + ((yy - s * 0.66) / ry) ** 2 < 1).astype(np.float32)


def _render(
    rng: np.random.Generator,
    size: int,
    right_lung: np.ndarray,
    left_lung: np.ndarray,
    hila: list[tuple[float, float]],
    heart: np.ndarray,
    pneumothorax: np.ndarray,
    opacity: np.ndarray | None = None,
) -> np.ndarray:
    """Draw the radiograph (uint8 [S, S]) of given anatomy and findings.

    pneumothorax: uint8 0/1 [S, S] (no markings, darker, a faint pleural line). opacity: optional float [S, S] in
    [0, 1] of airless lung (effusion, nodules, masses): it removes the markings there and brightens towards soft
    tissue. Draws from ``rng`` in a fixed order, so the binary generator's images stay the same.
    """
    s = size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    torso = (((xx - s / 2) / (s * 0.44)) ** 2 + ((yy - s * 0.62) / (s * 0.62)) ** 2 < 1).astype(np.float32)
    torso = cv2.GaussianBlur(torso, (0, 0), s / 25)
    lungs = np.maximum(right_lung, left_lung).astype(np.float32)
    mediastinum = ((np.abs(xx - s / 2) < s * 0.07) & (yy > s * 0.1)).astype(np.float32)
    soft = cv2.GaussianBlur(np.maximum(heart, mediastinum), (0, 0), s / 60)
    mask = pneumothorax

    markings = _lung_markings(rng, s, hila) * lungs * (1 - mask)
    if opacity is not None:
        markings *= 1 - opacity
    lung_field = cv2.GaussianBlur(lungs * (1 - 0.35 * soft), (0, 0), s / 100)
    image = 15 + 125 * torso  # soft tissue
    aeration = 85 * lung_field * (0.9 + 0.1 * _smooth_noise(rng, s, s / 30))
    image -= aeration  # aerated lungs are dark
    image += 95 * soft * torso
    image += 38 * markings
    image += 22 * _ribs(rng, s) * torso
    if mask.any():  # a collapsed margin: no markings, darker, a faint pleural line on its inner edge
        pleura = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) * (1 - mask) * right_lung
        pleura |= cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) * (1 - mask) * left_lung
        image -= 30 * cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.8)
        image += 30 * cv2.GaussianBlur(pleura.astype(np.float32), (0, 0), 0.6)
    if opacity is not None:  # water density: the lung's darkness is filled in, a little brighter than soft tissue
        image += opacity * (aeration + 25 * torso)
    image += 3 * _smooth_noise(rng, s, 1.0) + 2.5 * rng.standard_normal((s, s))
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 0.5)
    return np.clip(image, 0, 255).astype(np.uint8)


def synthetic_radiograph(seed: int, size: int = 256, positive: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and mask: uint8 [size, size] gray, uint8 [size, size] 0/255 pneumothorax."""
    rng = np.random.default_rng(seed)
    s = size
    if positive is None:
        positive = rng.random() < POSITIVE_FRACTION
    right_lung, left_lung, hila = _lung_masks(rng, s)
    mask = np.zeros((s, s), np.uint8)
    if positive:
        fraction = np.exp(rng.normal(np.log(MEDIAN_LESION_FRACTION), 1.5))
        fraction = float(np.clip(fraction, MIN_LESION_FRACTION, MAX_LESION_FRACTION))
        regions = 2 if rng.random() < 0.2 else 1
        lungs_hit = [right_lung, left_lung]
        rng.shuffle(lungs_hit)
        for lung in lungs_hit[:regions]:
            mask |= _pneumothorax(rng, lung, fraction * s * s / regions)
    image = _render(rng, s, right_lung, left_lung, hila, _heart(s), mask)
    return image, mask * 255


# --------------------------------------------------------------------------- multi-label (ChestX-Det-like)

MULTILABEL_DEMO_CLASSES = ("Cardiomegaly", "Effusion", "Mass", "Nodule", "Pneumothorax")
"""The ChestX-Det findings the multi-label demo draws; the other 8 planes stay empty."""
MULTILABEL_DEMO_PREVALENCE = {"Cardiomegaly": 0.3, "Effusion": 0.35, "Mass": 0.15, "Nodule": 0.25, "Pneumothorax": 0.15}
"""Fraction of images holding each finding (drawn independently; Mass and Pneumothorax rare, as in ChestX-Det)."""


def _effusion(rng: np.random.Generator, lung: np.ndarray) -> np.ndarray:
    """Fluid in the base of ``lung`` below a meniscus that rises towards the lateral chest wall; uint8 0/1."""
    ys, xs = np.nonzero(lung)
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    columns = np.arange(lung.shape[1], dtype=np.float32)
    towards_wall = (right - columns) if (left + right) / 2 < lung.shape[1] / 2 else (columns - left)
    lateral = np.clip(towards_wall / max(right - left, 1), 0, 1)  # 1 at the chest wall, 0 at the mediastinum
    height = (bottom - top) * rng.uniform(0.12, 0.32)
    boundary = bottom - height * (0.45 + 0.55 * lateral**1.5)  # y of the fluid's upper edge, per column
    rows = np.arange(lung.shape[0], dtype=np.float32)[:, None]
    return ((rows >= boundary[None, :]) & (lung > 0)).astype(np.uint8)


def _disk(size: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return (((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) <= radius**2).astype(np.uint8)


def _point_in(rng: np.random.Generator, region: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(region)
    k = int(rng.integers(len(xs)))
    return float(xs[k]), float(ys[k])


def synthetic_multilabel_radiograph(seed: int, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One ChestX-Det-like image and its planes: uint8 [S, S] gray, uint8 0/1 [13, S, S] in CHESTXDET_CLASSES order.

    Findings (:data:`MULTILABEL_DEMO_PREVALENCE`), each drawn its own way: Cardiomegaly = an enlarged heart (the
    plane is the heart; a normal heart is unlabelled), Effusion = a bright homogeneous basal region with a meniscus,
    Mass = a dense lobulated opacity of radius ~8-11% of the image, Nodule = 1-3 round opacities of radius ~3%,
    Pneumothorax as the binary demo draws it. Regions overlap as in ChestX-Det: a left effusion runs into an
    enlarged heart, a mass may sit on the heart border, nodules may lie in fluid, a pneumothorax may meet an effusion.
    """
    rng = np.random.default_rng(seed)
    s = size
    has = {name: rng.random() < p for name, p in MULTILABEL_DEMO_PREVALENCE.items()}
    planes = np.zeros((len(CHESTXDET_CLASSES), s, s), np.uint8)
    plane = {name: planes[CHESTXDET_CLASSES.index(name)] for name in MULTILABEL_DEMO_CLASSES}  # views
    right_lung, left_lung, hila = _lung_masks(rng, s)
    lungs = np.maximum(right_lung, left_lung)
    if has["Cardiomegaly"]:
        heart = _heart(s, rng.uniform(1.35, 1.5), rng.uniform(1.1, 1.2))
        plane["Cardiomegaly"][:] = heart.astype(np.uint8)
    else:
        heart = _heart(s, rng.uniform(0.92, 1.05), rng.uniform(0.95, 1.05))
    opacity = np.zeros((s, s), np.float32)
    if has["Effusion"]:
        sides = ([right_lung], [left_lung], [right_lung, left_lung])[rng.choice(3, p=[0.35, 0.4, 0.25])]
        for lung in sides:
            plane["Effusion"][:] |= _effusion(rng, lung)
        opacity = np.maximum(opacity, cv2.GaussianBlur(plane["Effusion"].astype(np.float32), (0, 0), s / 200 + 0.3))
    heart_border = cv2.morphologyEx(heart.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) & lungs
    if has["Mass"]:  # one dense lobulated opacity, half the time on the border of an enlarged heart
        radius = s * rng.uniform(0.08, 0.11)
        on_heart = has["Cardiomegaly"] and heart_border.any() and rng.random() < 0.5
        centre = np.array(_point_in(rng, heart_border if on_heart else lungs))
        mass = _disk(s, tuple(centre), radius)
        for angle in rng.uniform(0, 2 * np.pi, 2):  # two lobes
            lobe = centre + 0.6 * radius * np.array([np.cos(angle), np.sin(angle)])
            mass |= _disk(s, tuple(lobe), radius * rng.uniform(0.5, 0.7))
        plane["Mass"][:] = mass
        density = rng.uniform(0.85, 1.0)
        opacity = np.maximum(opacity, density * cv2.GaussianBlur(mass.astype(np.float32), (0, 0), radius / 8))
    if has["Nodule"]:  # one to three small round opacities anywhere in the lungs (maybe in fluid)
        for _ in range(int(rng.integers(1, 4))):
            radius = s * rng.uniform(0.025, 0.035)
            nodule = _disk(s, _point_in(rng, lungs), radius)
            plane["Nodule"][:] |= nodule
            density = rng.uniform(0.75, 0.9)
            opacity = np.maximum(opacity, density * cv2.GaussianBlur(nodule.astype(np.float32), (0, 0), radius / 5))
    if has["Pneumothorax"]:
        lung = right_lung if rng.random() < 0.5 else left_lung
        fraction = float(np.clip(np.exp(rng.normal(np.log(0.025), 0.5)), 0.006, 0.08))
        plane["Pneumothorax"][:] = _pneumothorax(rng, lung, fraction * s * s)
    image = _render(rng, s, right_lung, left_lung, hila, heart, plane["Pneumothorax"], opacity)
    return image, planes


# --------------------------------------------------------------------------- anatomy (JSRT/SCR-like)

ANATOMY_DEMO_CLASSES = ("background", "lung", "heart")
"""The anatomy demo's single-label classes, background first; the heart wins where it overlaps a lung field."""


def _patient_pose(rng: np.random.Generator, size: int) -> np.ndarray:
    """A 2x3 affine placing the patient: scale 0.82-1.08, rotation ±8°, shift ±8% of the image, about the centre."""
    scale = rng.uniform(0.82, 1.08)
    angle = rng.uniform(-8.0, 8.0)
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    matrix[:, 2] += rng.uniform(-0.08, 0.08, 2) * size
    return matrix


def synthetic_anatomy_radiograph(seed: int, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One image and its anatomy mask: uint8 [S, S] gray and uint8 [S, S] class indices of
    :data:`ANATOMY_DEMO_CLASSES` (0 background, 1 lung fields, 2 heart).

    The heart varies in size (width x0.85-1.35, height x0.9-1.15) and the whole chest in position, size and tilt
    (:func:`_patient_pose`; outside the film is the dark background), so the structures are large and always present
    but not in one place.
    """
    rng = np.random.default_rng(seed)
    s = size
    right_lung, left_lung, hila = _lung_masks(rng, s)
    heart = _heart(s, rng.uniform(0.85, 1.35), rng.uniform(0.9, 1.15))
    image = _render(rng, s, right_lung, left_lung, hila, heart, np.zeros((s, s), np.uint8))
    classes = np.maximum(right_lung, left_lung).astype(np.uint8)
    classes[heart > 0] = 2
    pose = _patient_pose(rng, s)
    image = cv2.warpAffine(image, pose, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=8)
    classes = cv2.warpAffine(classes, pose, (s, s), flags=cv2.INTER_NEAREST, borderValue=0)
    return image, classes
