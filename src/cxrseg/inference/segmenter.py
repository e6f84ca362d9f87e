"""Load a trained model (local folder or Hub id) and turn images into probabilities: the one place for inference.

The pipeline is the one training evaluates with: uint8 gray ``[H, W]`` → resize to the model's working size (the
image processor's ``size``; ``cv2.INTER_AREA`` through ``build_transforms("none")``) → :class:`ToModelInputs`
(3 channels, the processor's mean and std) → UperNet → probabilities of the foreground outputs at the working size
(single-label: softmax, every class but background; multi-label: one sigmoid per class) → with ``tta="hflip"``, the
mean of the probabilities of the image and of its mirror image (mirrored back) → bilinear resize to the original
size when a caller needs it (:meth:`Segmenter.resize_probabilities`).

Masks follow :meth:`Segmenter.masks`: the model's ``postprocess.json`` (the SIIM triplet, or one per class for
a multi-output model, see :mod:`cxrseg.postprocessing.rules`) when it has one, else ``prob >= 0.5`` per class.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoImageProcessor, UperNetForSemanticSegmentation

from cxrseg.constants import POSTPROCESS_FILENAME, PRIOR_MASK_FILENAME, SPLITS_FILENAME
from cxrseg.errors import ModelLoadError, UsageError
from cxrseg.inference.preprocessor import Preprocessor
from cxrseg.labels import LabelSet, labels_from_config
from cxrseg.model import set_attention
from cxrseg.postprocessing.lookup import find_rule
from cxrseg.postprocessing.rules import MaskRule, PostProcess

logger = logging.getLogger(__name__)

TTA_MODES = ("none", "hflip")
PRECISIONS = ("fp32", "bf16")

HUB_FILES = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "preprocessor_config.json",
    POSTPROCESS_FILENAME,
    SPLITS_FILENAME,
    PRIOR_MASK_FILENAME,
    "trainer_state.json",
)
"""What is downloaded of a Hub model repository (checkpoints and other large files are not)."""


def resolve_model(model: str | os.PathLike) -> tuple[Path, bool]:
    """(local folder holding the model, whether ``model`` was a local folder rather than a Hub id).

    A Hub id is downloaded (only :data:`HUB_FILES`) to the Hugging Face cache with ``snapshot_download``; offline,
    a cached copy is used.
    """
    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a model folder: it has no config.json (train one with run_train.py).")
        return path, True
    if path.exists():
        raise ModelLoadError(f"{path} is a file; --model takes a model folder or a Hub id.")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id=str(model), allow_patterns=list(HUB_FILES))
    except Exception as error:  # the hub raises many types (validation, HTTP, offline, not found)
        raise ModelLoadError(
            f"{model!r} is neither a local model folder nor a downloadable Hub model: {type(error).__name__}: {error}"
        ) from error
    if not (Path(folder) / "config.json").is_file():
        raise ModelLoadError(f"Hub repository {model!r} has no config.json: it is not a model repository.")
    return Path(folder), False


def _working_size(processor, config) -> tuple[int, int]:
    size = getattr(processor, "size", None) or {}
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    if "shortest_edge" in size:
        return int(size["shortest_edge"]), int(size["shortest_edge"])
    image_size = getattr(config.backbone_config, "image_size", None)
    if image_size is None:
        raise ModelLoadError("The model's image processor has no size and its backbone config no image_size.")
    return int(image_size), int(image_size)


MEMORY_FORMAT = torch.channels_last
"""Layout of the inference network's convolution weights and of its inputs: channels-last (NHWC) lets oneDNN skip
layout conversions around every convolution. Logits equal the default NCHW layout's within 1e-6
(``tests/inference/test_inference.py``); the measured speed-ups are in ``BENCHMARKS.md``."""


def main_logits(model: UperNetForSemanticSegmentation, pixel_values: torch.Tensor) -> torch.Tensor:
    """UperNet's logits [B, C, h, w] at the input size, computed as its ``forward`` computes them but without the
    auxiliary head, whose logits only serve training (the forward would run it and upsample it to full size)."""
    features = model.backbone.forward_with_filtered_kwargs(pixel_values).feature_maps
    # The classifier's few channels upsample 2.5x faster in NCHW than in channels-last on the CPU, to the same bits.
    logits = model.decode_head(features).contiguous()
    return F.interpolate(logits, size=pixel_values.shape[2:], mode="bilinear", align_corners=False)


@dataclass
class Segmenter:
    """A loaded model ready for inference (build it with :func:`load_segmenter`).

    labels: the model's label set (:func:`cxrseg.labels.labels_from_config`); outputs are ``labels.foreground``
    (K planes). preprocessor: the input pipeline. postprocess: the mask rule (one triplet for a single-foreground
    model, one per class otherwise), ``min_area`` at the working size; None means ``prob >= 0.5``. model_dir: the
    folder the model was read from (the Hub cache for Hub ids); is_local: whether ``source`` named a local folder.
    precision: "fp32", or "bf16" (autocast; probabilities stay float32). compile: run the network through
    ``torch.compile``, one graph for the largest batch seen (smaller batches are padded to it). Compiling takes about
    a minute on a 2-core CPU the first time, seconds later (torch's on-disk compile cache; ``BENCHMARKS.md``).
    """

    model: UperNetForSemanticSegmentation
    labels: LabelSet
    preprocessor: Preprocessor
    postprocess: MaskRule | None
    source: str
    model_dir: Path
    is_local: bool
    device: torch.device
    splits: dict[str, list[str]] | None = None
    precision: str = "fp32"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {self.precision!r}; choose one of {PRECISIONS}.")
        self._main_logits = torch.compile(main_logits, dynamic=False) if self.compile else None
        self._compiled_batch = 0

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the K probability planes: the foreground classes."""
        return self.labels.foreground

    @property
    def image_size(self) -> int:
        """Side of the square working size (pixels): where evaluation runs and ``min_area`` is counted."""
        return self.preprocessor.size[0]

    @property
    def rule(self) -> MaskRule:
        """The mask rule in effect (``PostProcess()`` = ``prob >= 0.5`` when the model has none)."""
        return self.postprocess if self.postprocess is not None else PostProcess()

    @torch.inference_mode()
    def probabilities(self, pixel_values: torch.Tensor, tta: str = "none") -> torch.Tensor:
        """pixel_values float32 [B, 3, h, w] → probabilities float32 [B, K, h, w] in [0, 1], on the CPU."""
        if tta not in TTA_MODES:
            raise ValueError(f"Unknown TTA {tta!r}; choose one of {TTA_MODES}.")
        pixel_values = pixel_values.to(self.device, non_blocking=True)
        probs = self.to_probabilities(self._logits(pixel_values))
        if tta == "hflip":
            probs = (probs + self.to_probabilities(self._logits(pixel_values.flip(-1))).flip(-1)) / 2
        return probs.cpu()

    @torch.inference_mode()
    def logits(self, pixel_values: torch.Tensor, tta: str = "none") -> torch.Tensor:
        """pixel_values float32 [B, 3, h, w] → the model's logits float32 [B, C, h, w] (C with background for a
        single-label model), on the CPU; with hflip, the mean of the image's and its mirror's (flipped back)."""
        if tta not in TTA_MODES:
            raise ValueError(f"Unknown TTA {tta!r}; choose one of {TTA_MODES}.")
        pixel_values = pixel_values.to(self.device, non_blocking=True)
        logits = self._logits(pixel_values).float()
        if tta == "hflip":
            logits = (logits + self._logits(pixel_values.flip(-1)).float().flip(-1)) / 2
        return logits.cpu()

    def _logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        with autocast:
            pixel_values = pixel_values.contiguous(memory_format=MEMORY_FORMAT)
            if self._main_logits is None:
                return main_logits(self.model, pixel_values)
            # A compiled graph is specialised to its batch size: a smaller batch (a run's last) is padded with copies
            # of its last image rather than compiled again (a minute on a CPU). Images do not interact in eval mode.
            count = pixel_values.shape[0]
            if count > self._compiled_batch:
                logger.info(
                    "Compiling the model for batches of %d: a minute or more the first time, seconds once torch "
                    "has cached it.",
                    count,
                )
                self._compiled_batch = count
            elif count < self._compiled_batch:
                padding = pixel_values[-1:].expand(self._compiled_batch - count, -1, -1, -1)
                pixel_values = torch.cat([pixel_values, padding]).contiguous(memory_format=MEMORY_FORMAT)
            return self._main_logits(self.model, pixel_values)[:count]

    def to_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, C, h, w] (any float dtype) → float32 [B, K, h, w]: softmax without background (single-label),
        one sigmoid per class (multi-label)."""
        logits = logits.float()
        if self.labels.multilabel:
            return logits.sigmoid()
        return logits.softmax(dim=1)[:, 1:]

    @staticmethod
    def resize_probabilities(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """probs float32 [K, h, w] (or [B, K, h, w]) → same at ``size`` (height, width), bilinear."""
        if tuple(probs.shape[-2:]) == tuple(size):
            return probs
        batch = probs if probs.ndim == 4 else probs.unsqueeze(0)
        out = F.interpolate(batch, size=tuple(size), mode="bilinear", align_corners=False).clamp_(0, 1)
        return out if probs.ndim == 4 else out[0]

    def masks(self, probs: torch.Tensor, probs_at_size: torch.Tensor | None = None) -> np.ndarray:
        """Binary masks uint8 0/1 [K, H, W] from one image's probabilities.

        probs: float32 [K, h, w] at the working size, where the rule decides whether each plane's mask is kept
        (the ``min_area`` gate was counted there). probs_at_size: the same probabilities at another size (e.g. the
        original image's, :meth:`resize_probabilities`); when given, a kept mask is ``probs_at_size >=
        bottom_threshold`` (smooth outlines at full size), else the mask is at the working size.
        """
        return self.rule.masks(probs, probs_at_size)

    def predict(self, images: Sequence[np.ndarray], tta: str = "none", batch_size: int = 8) -> list[torch.Tensor]:
        """uint8 gray images [H_i, W_i] → probabilities float32 [K, H_i, W_i] at each image's original size."""
        results = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            probs = self.probabilities(torch.stack([self.preprocessor(image) for image in chunk]), tta)
            results += [self.resize_probabilities(p, image.shape[:2]) for p, image in zip(probs, chunk)]
        return results


def pick_device(device: str = "auto") -> torch.device:
    """ "auto": the first CUDA GPU if there is one, else the CPU; otherwise ``torch.device(device)``, which must
    exist on this machine (:class:`~cxrseg.errors.UsageError` otherwise)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as error:
        raise UsageError(f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N.") from error
    if chosen.type == "cuda" and not (torch.cuda.is_available() and (chosen.index or 0) < torch.cuda.device_count()):
        raise UsageError(
            f"--device {device}: this machine has {torch.cuda.device_count() if torch.cuda.is_available() else 'no'} "
            "usable CUDA GPU(s) (`cxrseg env` says why); use --device cpu or auto."
        )
    return chosen


def load_segmenter(
    model: str | os.PathLike,
    *,
    device: str = "auto",
    use_postprocess: bool = True,
    postprocess_path: str | os.PathLike | None = None,
    precision: str = "fp32",
    compile: bool = False,
) -> Segmenter:
    """Load a model folder or Hub id, its image processor and its ``postprocess.json`` / ``splits.json``.

    use_postprocess: False ignores any post-processing (masks are ``prob >= 0.5``). postprocess_path: a
    ``postprocess.json`` to use instead of the model's own. A single triplet applies to a one-output model (for
    others it is ignored with a warning); per-class triplets must name the model's outputs. precision, compile: see
    :class:`Segmenter`. Swin runs :data:`cxrseg.model.DEFAULT_ATTENTION`.
    """
    torch_device = pick_device(device)
    model_dir, is_local = resolve_model(model)
    try:
        network = UperNetForSemanticSegmentation.from_pretrained(model_dir)
    except Exception as error:
        raise ModelLoadError(f"Cannot load a UperNet model from {model}: {type(error).__name__}: {error}") from error
    try:
        processor = AutoImageProcessor.from_pretrained(model_dir)
    except Exception as error:
        raise ModelLoadError(
            f"{model}: cannot load its image processor (preprocessor_config.json): {type(error).__name__}: {error}"
        ) from error
    labels = labels_from_config(network.config)
    preprocessor = Preprocessor(
        _working_size(processor, network.config), tuple(processor.image_mean), tuple(processor.image_std)
    )
    postprocess = None
    if use_postprocess:
        default = model_dir / POSTPROCESS_FILENAME
        postprocess = find_rule(postprocess_path, default, labels, preprocessor.size[0], str(model))
    splits_path = model_dir / SPLITS_FILENAME
    try:
        splits = json.loads(splits_path.read_text()) if splits_path.is_file() else None
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{splits_path}: cannot read the model's splits ({error}).") from error
    set_attention(network)
    network.to(torch_device, memory_format=MEMORY_FORMAT).eval()
    return Segmenter(
        network,
        labels,
        preprocessor,
        postprocess,
        str(model),
        model_dir,
        is_local,
        torch_device,
        splits,
        precision=precision,
        compile=compile,
    )


FEATURE_LAYERS = (
    ("decode_head.bottleneck", "UperNet PPM"),
    ("decode_head.fpn_convs.0", "UperNet FPN 1/4"),
    ("decode_head.fpn_convs.1", "UperNet FPN 1/8"),
    ("decode_head.fpn_convs.2", "UperNet FPN 1/16"),
    ("decode_head.fpn_bottleneck", "UperNet fused"),
    ("auxiliary_head.convs", "auxiliary FCN"),
)
"""Head modules whose outputs :func:`feature_maps` records (after the Swin stages), with display names."""


@torch.inference_mode()
def feature_maps(segmenter: Segmenter, image: np.ndarray) -> tuple[list[tuple[str, torch.Tensor]], torch.Tensor]:
    """Intermediate activations of one image, recorded with forward hooks during one forward pass.

    image: uint8 gray [H, W]. Returns ([(name, float32 [C, h, w]) for each Swin stage (the backbone's
    ``feature_maps``) and each :data:`FEATURE_LAYERS` module present], probabilities float32 [K, S, S]).
    """
    model = segmenter.model
    recorded: list[tuple[str, torch.Tensor]] = []
    stages = list(getattr(model.backbone, "out_features", None) or [])

    def backbone_hook(module, inputs, output) -> None:
        for name, value in zip(stages or range(len(output.feature_maps)), output.feature_maps):
            recorded.append((f"Swin {name}", value[0].float().cpu()))

    def make_hook(name: str):
        def hook(module, inputs, output) -> None:
            recorded.append((name, output[0].float().cpu()))

        return hook

    modules = dict(model.named_modules())
    handles = [model.backbone.register_forward_hook(backbone_hook)]
    handles += [
        modules[path].register_forward_hook(make_hook(name)) for path, name in FEATURE_LAYERS if path in modules
    ]
    try:  # the whole forward, auxiliary head included, so that every hook fires
        logits = model(pixel_values=segmenter.preprocessor(image).unsqueeze(0).to(segmenter.device)).logits
        probs = segmenter.to_probabilities(logits)[0].cpu()
    finally:
        for handle in handles:
            handle.remove()
    return recorded, probs  # in forward order: Swin stages, then the heads
