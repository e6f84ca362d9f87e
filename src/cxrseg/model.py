"""Build the UperNet-Swin model and its image processor, and the forward pass that also returns the aux logits."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import AutoImageProcessor, UperNetConfig, UperNetForSemanticSegmentation

try:  # the PIL backend: the default one needs torchvision, which has no wheel matching our pinned torch everywhere
    from transformers import SegformerImageProcessorPil as SegformerImageProcessor
except ImportError:  # transformers releases before the backend split
    from transformers import SegformerImageProcessor

from cxrseg.errors import ModelLoadError, RecipeError
from cxrseg.labels import IGNORE_INDEX, TASK_KEY, LabelSet, label_config

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")
DEFAULT_ATTENTION = "sdpa"
"""How Swin computes its window attention. "sdpa": ``torch.nn.functional.scaled_dot_product_attention`` with the
relative position bias (plus the shifted-window mask) as its additive ``attn_mask``, which lets PyTorch pick a fused
kernel; "eager": the explicit matmul, softmax, matmul. Same weights, same outputs
(``tests/inference/test_attention.py``);
``BENCHMARKS.md`` has the speeds. The choice is not saved in ``config.json``: a plain
``UperNetForSemanticSegmentation.from_pretrained`` loads every model cxrseg writes."""


class SingleValueSafeBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training, normalises with its running statistics when a channel has one value.

    UperNet's pyramid-pooling branch pools to 1x1, so a training batch of one image gives BatchNorm a single value
    per channel and PyTorch raises. Using running statistics for that case (and not updating them) is what eval
    mode does; every other case is plain BatchNorm. Only the class changes, so weights and state dicts are unchanged.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.training and input.shape[0] * input.shape[2] * input.shape[3] == 1:
            return F.batch_norm(
                input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(input)


def make_batchnorm_single_value_safe(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = SingleValueSafeBatchNorm2d
    return model


def set_attention(model: UperNetForSemanticSegmentation, implementation: str = DEFAULT_ATTENTION) -> None:
    """Make the Swin backbone compute attention with ``implementation`` (:data:`ATTENTION_IMPLEMENTATIONS`).

    UperNet's own config takes no attention setting (transformers raises for "sdpa" there), so the backbone's sub
    config is set; the weights are untouched. A backbone without an SDPA path (not Swin) keeps eager attention.
    """
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"Unknown attention implementation {implementation!r}; choose one of {ATTENTION_IMPLEMENTATIONS}."
        )
    if implementation == "sdpa" and not getattr(model.backbone, "_supports_sdpa", False):
        logger.info("%s has no SDPA attention; it keeps eager attention.", type(model.backbone).__name__)
        return
    model.set_attn_implementation({"backbone_config": implementation})
    if model.backbone.config._attn_implementation != implementation:
        raise RuntimeError(f"transformers kept attention {model.backbone.config._attn_implementation!r} for Swin.")


def build_image_processor(image_size: int) -> SegformerImageProcessor:
    """The processor saved with every model: resize to ``image_size`` square, ImageNet normalisation, no label
    reduction (background is class 0). It has ``post_process_semantic_segmentation``, which the
    ``image-segmentation`` pipeline needs."""
    return SegformerImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        do_rescale=True,
        do_normalize=True,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        do_reduce_labels=False,
    )


CONFIG_ERRORS = (KeyError, TypeError, ValueError, RuntimeError, ArithmeticError, IndexError, StrictDataclassError)
"""What transformers and torch raise for a model config whose values do not fit: an unknown model_type or key,
a value of the wrong type (the configs' strict dataclass checks), heads that do not divide the embedding (a
reshape), channels that do not match (a convolution), a window of 0 (a modulo)."""


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split()).rstrip(".")


def _inline_model(model_config: dict[str, Any], labels: LabelSet) -> UperNetForSemanticSegmentation:
    """A UperNet built from the recipe's ``model_config``; :class:`~cxrseg.errors.RecipeError` when the config or the
    model cannot be built from it."""
    spec = dict(model_config)
    if not isinstance(spec.get("backbone_config"), dict):
        raise RecipeError("model_config needs a 'backbone_config' mapping (e.g. model_type: swin, embed_dim: 16).")
    try:
        config = UperNetConfig(
            **spec,
            **label_config(labels),
            loss_ignore_index=IGNORE_INDEX,
        )
        return UperNetForSemanticSegmentation(config)
    except CONFIG_ERRORS as error:
        raise RecipeError(f"model_config is not a valid UperNet config: {_one_line(error)}.") from error


def check_model_runs(model: UperNetForSemanticSegmentation, image_size: int, where: str) -> None:
    """A dry training step on a copy of ``model``: forward in training mode on two blank ``image_size`` square images,
    a loss on the main and auxiliary logits, backward. Shapes that only fail when the model runs or learns (heads that
    do not divide a stage's width, mismatched channels, an image too small for the backbone) end here as one
    :class:`~cxrseg.errors.RecipeError` naming ``where`` the model came from, before a run writes anything, instead of
    at the first training step. ``model`` (weights, BatchNorm statistics, mode) and torch's CPU random state are left
    as they were, so the run trains exactly as it would without the check."""
    probe = copy.deepcopy(model).train()
    auxiliary = AuxiliaryLogits(probe)
    channels = getattr(model.config.backbone_config, "num_channels", 3)
    try:
        with torch.random.fork_rng(devices=[]):  # dropout and drop-path draw here, not from the run's stream
            logits = probe(pixel_values=torch.zeros(2, channels, image_size, image_size)).logits
            side = auxiliary.pop(logits.shape[-2:])
            loss = logits.float().mean() + (side.float().mean() if side is not None else 0.0)
            loss.backward()
    except CONFIG_ERRORS as error:
        raise RecipeError(
            f"The model from {where} cannot run on {image_size}x{image_size} images ({_one_line(error)}): fix "
            "model_config (e.g. num_heads must divide each stage's width embed_dim * 2**stage) or image_size."
        ) from error


def build_model(
    model_name_or_path: str | None,
    model_config: dict | None,
    labels: LabelSet,
    image_size: int,
    attention: str = DEFAULT_ATTENTION,
) -> tuple[UperNetForSemanticSegmentation, SegformerImageProcessor]:
    """A UperNet with ``labels.num_labels`` outputs and the label set in its config
    (:func:`cxrseg.labels.label_config`: id2label, problem_type, cxrseg_task), plus its image processor.

    From ``model_name_or_path`` (Hub id or local folder): pretrained weights; a head of another size (e.g. ADE20k's
    150 classes) is re-initialised (``ignore_mismatched_sizes``). Otherwise from the inline ``model_config``.
    attention: Swin's attention implementation (:data:`DEFAULT_ATTENTION`).
    """
    if model_name_or_path is not None:
        try:
            model = UperNetForSemanticSegmentation.from_pretrained(
                model_name_or_path,
                **{key: value for key, value in label_config(labels).items() if key != TASK_KEY},
                ignore_mismatched_sizes=True,
            )
        except (OSError, ValueError) as error:  # not found, offline, no weights, corrupt file, not a UperNet
            raise ModelLoadError(
                f"model_name_or_path {model_name_or_path!r} cannot be loaded ({type(error).__name__}: "
                f"{' '.join(str(error).split())}). Give a local model folder or a Hub id that is reachable (or in the "
                "cache when offline), or set model_name_or_path: null and a model_config."
            ) from error
        try:
            processor = AutoImageProcessor.from_pretrained(model_name_or_path)
            processor.size = {"height": image_size, "width": image_size}
            processor.do_reduce_labels = False
        except OSError:
            logger.info("No image processor at %s; using the default Swin one.", model_name_or_path)
            processor = build_image_processor(image_size)
    else:
        model = _inline_model(model_config, labels)
        processor = build_image_processor(image_size)
    model.config.loss_ignore_index = IGNORE_INDEX
    setattr(model.config, TASK_KEY, labels.task)  # not a config field: from_pretrained would pass it to the model
    set_attention(model, attention)
    return make_batchnorm_single_value_safe(model), processor


class AuxiliaryLogits:
    """Captures the auxiliary head's output during the model's own forward pass (a forward hook), so the main and
    auxiliary logits come from one forward without the built-in loss; it also works under ``torch.compile``
    (``bench/compile_check.py``). Under DDP the logits must also leave the forward as an output, or DDP takes the
    auxiliary head for unused: :class:`cxrseg.training.trainer.SegmentationTrainer` does that."""

    def __init__(self, model: UperNetForSemanticSegmentation) -> None:
        self.value: torch.Tensor | None = None
        head = model.auxiliary_head
        self.handle = head.register_forward_hook(self._store) if head is not None else None

    def _store(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self.value = output

    def pop(self, size: tuple[int, int]) -> torch.Tensor | None:
        """The last auxiliary logits, upsampled (bilinear, as UperNet does) to ``size``; None without the head."""
        value, self.value = self.value, None
        if value is None:
            return None
        return F.interpolate(value, size=size, mode="bilinear", align_corners=False)
