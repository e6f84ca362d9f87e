"""The web app: ``cxrseg app --model MODEL``, and the repository's ``app.py`` as a Hugging Face Space.

A user uploads a PNG, JPEG or DICOM radiograph (or picks an example) and sees the overlay, the probability map,
per class whether the finding is present with its score and area (defined in :mod:`cxrseg.app.findings`), and can
download the mask PNG (as ``cxrseg predict`` writes it) and, for a DICOM upload, a DICOM SEG of the masks that
references it (as ``cxrseg predict --dicom-seg binary`` writes it), for a PACS viewer. The model's
``postprocess.json`` applies; a checkbox shows the raw threshold instead. An input that cannot be used gives a
message in the page, and the app goes on.

Gradio glue only: reading, segmenting and summarising are :mod:`cxrseg.app.findings`, pictures :mod:`cxrseg.plots`.
Gradio is optional (``pip install 'cxrseg[app]'``). Analytics are off and the page loads nothing from outside the
server, so the app works offline.
"""

from __future__ import annotations

import html
import logging
import os
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from cxrseg.app.findings import (
    MAX_MEGAPIXELS,
    Finding,
    ImageSegmentation,
    read_radiograph,
    segment_image,
)
from cxrseg.errors import CxrsegError, OptionalDependencyError
from cxrseg.hub.card import training_data
from cxrseg.imageio.dicom_seg import write_dicom_seg
from cxrseg.imageio.images import DICOM_SUFFIXES, IMAGE_SUFFIXES, write_png
from cxrseg.inference.predict import cxrseg_version, mask_png_pixels, model_name
from cxrseg.inference.predictor import Predictor
from cxrseg.plots import class_colours, overlay, probability_image
from cxrseg.postprocessing.rules import ClassPostProcess, PostProcess

# No telemetry or version check (outbound requests) from any Blocks, Gradio's inner ones included; a user's own
# setting wins.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
try:
    import gradio as gr
except ImportError as error:
    raise OptionalDependencyError(
        "The web app needs Gradio, which cxrseg does not install by default: pip install 'cxrseg[app]'."
    ) from error

logger = logging.getLogger(__name__)

PACKAGED_EXAMPLES = Path(__file__).parent / "examples"
"""Two NIH ChestX-ray14 radiographs (attribution in the README.md beside them)."""
MAX_UPLOAD = "200mb"
"""Largest upload Gradio accepts (a 16-bit uncompressed 4300² DICOM is 37 MB)."""
BUTTONS = ["download", "fullscreen"]
"""Buttons on the pictures (not Gradio's "share", which posts to the Hub)."""
CACHE_LIFETIME_S = 3600
"""Uploads, pictures and mask PNGs are deleted from the server this long after they were made."""


def create_app(
    segmenter: Predictor,
    examples: Sequence[str | os.PathLike] = (),
    tta: str = "none",
    max_megapixels: float = MAX_MEGAPIXELS,
) -> gr.Blocks:
    """The page for ``segmenter`` (a :class:`~cxrseg.inference.predictor.Predictor`: one model or an ensemble)."""
    names = segmenter.output_names
    colours = class_colours(len(names))
    has_rule = segmenter.postprocess is not None
    with gr.Blocks(
        title="cxrseg: chest X-ray segmentation",
        analytics_enabled=False,
        delete_cache=(CACHE_LIFETIME_S, CACHE_LIFETIME_S),
    ) as demo:
        gr.Markdown(_model_info(segmenter), elem_id="model-info")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(
                    label="Radiograph (PNG, JPEG or DICOM)", file_types=list(IMAGE_SUFFIXES), elem_id="upload"
                )
                raw = gr.Checkbox(
                    label="Raw threshold (prob ≥ 0.5), not the model's postprocess.json",
                    info=None if has_rule else "This model has no postprocess.json: its masks are prob ≥ 0.5.",
                    interactive=has_rule,
                    elem_id="raw-threshold",
                )
                if examples:
                    gr.Examples([[str(path)] for path in examples], inputs=[upload], label="Examples")
            with gr.Column(scale=2):
                message = gr.HTML(elem_id="message")
                with gr.Row():
                    shown_overlay = gr.Image(
                        label="Overlay", format="png", interactive=False, buttons=BUTTONS, elem_id="overlay"
                    )
                    probability = gr.Image(
                        label="Probability" + (" (highest of any class)" if len(names) > 1 else ""),
                        format="png",
                        interactive=False,
                        buttons=BUTTONS,
                        elem_id="probability",
                    )
                table = gr.HTML(elem_id="findings")
                mask_file = gr.File(
                    label="Mask PNG"
                    + (" (0/255)" if len(names) == 1 else f" (16-bit: bit c = class c: {', '.join(names)})"),
                    interactive=False,
                    elem_id="mask",
                )
                seg_file = gr.File(
                    label="DICOM SEG of the masks, referencing the uploaded DICOM (for PACS viewers)",
                    interactive=False,
                    visible=False,  # shown for DICOM uploads only
                    elem_id="dicom-seg",
                )

        no_seg = gr.File(value=None, visible=False)

        def analyse(path: str | None, raw_threshold: bool):
            if not path:
                return "", None, None, "", None, no_seg
            name = Path(path).name
            try:
                radiograph = read_radiograph(path, max_megapixels)
                result = segment_image(segmenter, radiograph, tta=tta, raw_threshold=raw_threshold)
            except CxrsegError as error:  # a file that cannot be used: say why, naming it as the user does
                text = str(error).removeprefix(f"{path}: ").replace(str(path), name)
                return _error_html(name, text), None, None, "", None, no_seg
            except Exception as error:  # a bug: the traceback goes to the server log, the page stays clean
                logger.exception("Segmenting %s failed", path)
                text = f"internal error ({type(error).__name__}); see the server log."
                return _error_html(name, text), None, None, "", None, no_seg
            masks_path = Path(demo.GRADIO_CACHE) / uuid.uuid4().hex / f"{Path(name).stem}_mask.png"
            write_png(masks_path, mask_png_pixels(result.masks))
            seg_path = _dicom_seg(segmenter, path, masks_path.with_name(f"{Path(name).stem}_seg.dcm"), result.masks)
            picture = overlay(radiograph.image, result.masks, colours, names=names if len(names) > 1 else None)
            rule = _rule_text(segmenter, raw_threshold)
            return (
                _summary_html(name, radiograph.image.shape, radiograph.pixel_spacing_mm, rule),
                picture,
                probability_image(result.probs),
                _findings_html(result, colours),
                str(masks_path),
                gr.File(value=str(seg_path), visible=True) if seg_path is not None else no_seg,
            )

        outputs = [message, shown_overlay, probability, table, mask_file, seg_file]
        upload.change(analyse, [upload, raw], outputs, api_name="segment")
        raw.change(analyse, [upload, raw], outputs, api_visibility="private")
    return demo


def _model_info(segmenter: Predictor) -> str:
    """The page's heading: the model, its classes, what it was trained on, and that it is not a medical device."""
    names = segmenter.output_names
    trained_on = training_data(segmenter.model_dir) if segmenter.model_dir is not None else None
    return (
        f"## cxrseg: chest X-ray segmentation\nModel `{segmenter.source}`, class"
        f"{'es' if len(names) > 1 else ''}: {', '.join(names)}. "
        f"Trained on: {trained_on or 'not recorded with this model (no recipe.yaml)'}. "
        "**Research software, not a medical device: not for diagnosis.**"
    )


def _dicom_seg(segmenter: Predictor, source: str, seg_path: Path, masks) -> Path | None:
    """The DICOM SEG of ``masks`` (uint8 0/1 [K, H, W]) at ``seg_path`` when ``source`` is a DICOM, else None; a SEG
    that cannot be written is logged (the masks are still shown)."""
    if Path(source).suffix.lower() not in DICOM_SUFFIXES:
        return None
    try:
        write_dicom_seg(
            source,
            seg_path,
            masks,
            segmenter.output_names,
            task=segmenter.labels.task,
            model_name=model_name(segmenter),
            software_version=cxrseg_version(),
        )
    except CxrsegError as error:
        logger.warning("No DICOM SEG for %s: %s", Path(source).name, error)
        return None
    return seg_path


def launch(demo: gr.Blocks, host: str | None = None, port: int | None = None, **options) -> None:
    """Serve ``demo`` (host, port: None takes Gradio's defaults and its GRADIO_SERVER_NAME/PORT variables, as on
    Spaces). options: more :meth:`gradio.Blocks.launch` arguments, e.g. ``prevent_thread_lock=True``."""
    demo.launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD, footer_links=[], **options)


def load_app(
    model: str | Sequence[str],
    device: str = "auto",
    tta: str = "none",
    max_megapixels: float = MAX_MEGAPIXELS,
    precision: str = "fp32",
    compile: bool = False,
) -> gr.Blocks:
    """The page for a model folder, a Hub id, a CV folder or several models (their ensemble:
    :func:`cxrseg.inference.ensemble.load_models`, which also takes ``device``, ``precision``, ``compile``), with the
    examples of :func:`example_inputs`."""
    # deferred for start-up time: torch and datasets load only when this runs
    from cxrseg.inference.ensemble import load_models

    segmenter = load_models(model, device=device, precision=precision, compile=compile, tta=tta, rule_mismatch="warn")
    with tempfile.TemporaryDirectory(prefix="cxrseg-app-examples-") as folder:  # Gradio copies examples at once
        examples = example_inputs(folder, multilabel=len(segmenter.output_names) > 1)
        return create_app(segmenter, examples, tta=tta, max_megapixels=max_megapixels)


def example_inputs(folder: str | os.PathLike, multilabel: bool = False) -> list[Path]:
    """The synthetic examples (drawn into ``folder``) and the packaged NIH radiographs."""
    # deferred for start-up time: torch and datasets load only when this runs
    from cxrseg.synthetic.demo_data import write_example_radiographs

    return [*write_example_radiographs(folder, multilabel=multilabel), *sorted(PACKAGED_EXAMPLES.glob("*.png"))]


def _rule_text(segmenter: Predictor, raw_threshold: bool) -> str:
    rule = segmenter.postprocess
    if rule is None or raw_threshold:
        return "prob ≥ 0.5" + (" (raw threshold; postprocess.json off)" if rule is not None else "")
    size = f" at {rule.image_size}²" if rule.image_size else ""
    if isinstance(rule, ClassPostProcess):
        each = "; ".join(f"{name} {_triplet_text(r)}" for name, r in zip(rule.classes, rule.rules))
        return f"postprocess.json{size}, per class: {each}"
    return f"postprocess.json: {_triplet_text(rule)}{size}"


def _triplet_text(rule: PostProcess) -> str:
    return f"kept where ≥ {rule.min_area} px reach {rule.top_threshold:g}, then prob ≥ {rule.bottom_threshold:g}"


def _summary_html(name: str, shape: tuple[int, int], spacing: tuple[float, float] | None, rule: str) -> str:
    size = f"{shape[1]} × {shape[0]} px"
    if spacing is not None:
        size += f", pixel spacing {spacing[0]:g} × {spacing[1]:g} mm"
    return f'<p class="cxrseg-ok"><b>{html.escape(name)}</b>: {size}. Mask rule: {html.escape(rule)}.</p>'


def _error_html(name: str, text: str) -> str:
    return (
        f'<p class="cxrseg-error" style="color:#b91c1c"><b>Cannot use {html.escape(name)}</b>: {html.escape(text)}</p>'
    )


def _area_text(finding: Finding) -> str:
    if finding.area_cm2 is None:
        return f"{finding.area_pixels:,} px"
    return f"{finding.area_cm2:.2f} cm² ({finding.area_pixels:,} px)"


def _findings_html(result: ImageSegmentation, colours) -> str:
    rows = "".join(
        f'<tr data-finding="{html.escape(f.name)}">'
        f'<td><span style="display:inline-block;width:1em;height:1em;background:rgb{tuple(int(c) for c in colour)}">'
        f'</span> {html.escape(f.name)}</td><td class="present">{"yes" if f.present else "no"}</td>'
        f'<td class="score">{f.score:.3f}</td><td class="area">{_area_text(f)}</td></tr>'
        for f, colour in zip(result.findings, colours)
    )
    return (
        '<table class="cxrseg-findings"><thead><tr><th>Class</th><th>Present</th><th>Score (peak probability)</th>'
        f"<th>Area</th></tr></thead><tbody>{rows}</tbody></table>"
    )
