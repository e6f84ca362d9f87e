"""A model's mask rule file (``postprocess.json``): found, read and fitted to the model, and saved.

A model's rule is the file given with ``--postprocess`` (it must exist), else the ``postprocess.json`` in its folder
(a trained model's, or a CV folder's for its ensemble) when there is one, else none (masks are ``prob >= 0.5``).
Its ``min_area`` is rescaled to the model's working size; the file format is
:func:`cxrseg.postprocessing.rules.load_postprocess`'s. A rule records how the predictions it was tuned on were
made (its ``provenance``), and :func:`check_rule` refuses it for predictions made otherwise; evaluation refuses it
at a score size other than the one it was tuned at (:func:`check_score_size`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cxrseg.constants import POSTPROCESS_FILENAME
from cxrseg.errors import ModelLoadError
from cxrseg.labels import LabelSet
from cxrseg.postprocessing.rules import ClassPostProcess, MaskRule, load_postprocess

logger = logging.getLogger(__name__)


def find_rule(
    given: str | os.PathLike | None,
    default: str | os.PathLike | None,
    labels: LabelSet,
    image_size: int,
    model: str,
) -> MaskRule | None:
    """The mask rule of a model: from the file ``given`` (``--postprocess``; it must exist), else from ``default``
    (its own ``postprocess.json``) when that exists, else None; read by :func:`load_rule`."""
    if given is not None:
        path = Path(given)
        if not path.exists():
            raise ModelLoadError(f"Post-processing file {path} does not exist.")
    elif default is not None and Path(default).exists():
        path = Path(default)
    else:
        return None
    return load_rule(path, labels, image_size, model)


def load_rule(path: str | os.PathLike, labels: LabelSet, image_size: int, model: str) -> MaskRule | None:
    """The mask rule in ``path`` for a model (named ``model`` in messages) with outputs ``labels.foreground`` and
    working size ``image_size`` (pixels): ``min_area`` rescaled to it. A single triplet on a multi-output model is
    ignored (None, with a warning); per-class triplets must name the outputs (else :class:`ModelLoadError`)."""
    path = Path(path)
    rule = _fitting_rule(path, labels, model)
    if rule is None:
        return None
    rule = _at_size(rule, image_size, path)
    logger.info("Post-processing from %s: %s", path, rule)
    return rule


def save_rule(rule: MaskRule, folder: str | os.PathLike) -> Path:
    """Save ``rule`` as ``folder/postprocess.json`` (atomically); returns the file written."""
    return rule.save(Path(folder) / POSTPROCESS_FILENAME)


def _fitting_rule(path: Path, labels: LabelSet, model: str) -> MaskRule | None:
    try:
        rule = load_postprocess(path)
    except ValueError as error:
        raise ModelLoadError(
            f"{error} Fix it or remove it (evaluate --search-postprocess writes a new one)."
        ) from error
    if isinstance(rule, ClassPostProcess):
        if rule.classes != labels.foreground:
            raise ModelLoadError(
                f"{path} has rules for {list(rule.classes)} but {model} predicts {list(labels.foreground)}."
            )
        return rule
    if len(labels.foreground) != 1:
        logger.warning(
            "Ignoring %s: one triplet applies to one foreground class; %s has %d.", path, model, len(labels.foreground)
        )
        return None
    return rule


def _at_size(rule: MaskRule, image_size: int, path: Path) -> MaskRule:
    """The rule with ``min_area`` at the working size (a file tuned at another size is rescaled, with a note)."""
    if rule.image_size is None:
        logger.warning(
            "%s does not say which size min_area was counted at; assuming the working size %d.", path, image_size
        )
        return rule.with_image_size(image_size)
    if rule.image_size != image_size:
        logger.info("Rescaling min_area of %s from %d² to the working size %d².", path, rule.image_size, image_size)
        return rule.scaled(image_size)
    return rule


def member_name(model: str | os.PathLike) -> str:
    """How a rule's provenance names a model: the last two parts of its folder path or Hub id
    (``outputs/demo-cv/fold_0`` → ``demo-cv/fold_0``), so that a moved folder keeps its name."""
    return "/".join(Path(str(model)).parts[-2:])


def check_rule(rule: MaskRule, made: dict, model: str, *, mismatch: str = "error") -> None:
    """Refuse to apply ``rule`` to predictions made otherwise than those it was tuned on.

    made: how the predictions are made: ``tta`` ("none" or "hflip"), ``kind`` ("single" or "ensemble"),
    ``members`` (:func:`member_name` of each model), and for an ensemble ``weights`` and ``average``. The rule's
    ``provenance`` (``postprocess.json``) says how its predictions were made: ``kind`` "single" (one model),
    "out_of_fold" (each image by the one fold model that never trained on it; ``members``: the folds) or "ensemble"
    (the mean of ``members``). It fits when the TTA is the same and: a single model's rule → a single model; an
    out-of-fold rule → one of its folds, or the ensemble of exactly its folds (the SIIM-ACR winners' practice: tuned
    on out-of-fold predictions, applied to the folds' mean); an ensemble's rule → the ensemble of the same members,
    weights and average. ``min_area`` is rescaled between sizes, so the working size
    is not checked. mismatch: "error" raises :class:`~cxrseg.errors.ModelLoadError` naming what differs; "warn" logs
    it. A rule without provenance (written before cxrseg recorded it, or by hand) is applied with a warning.
    """
    provenance = getattr(rule, "provenance", None)
    if provenance is None:
        logger.warning(
            "The mask rule of %s records no provenance (a postprocess.json written before cxrseg recorded how its "
            "predictions were made, or by hand): cannot check that it was tuned on predictions made like these "
            "(TTA %s, %s).",
            model,
            made["tta"],
            made["kind"],
        )
        return
    kind, members = provenance.get("kind"), list(provenance.get("members") or [])
    problems = []
    if provenance.get("tta") != made["tta"]:
        problems.append(f"it was tuned with TTA {provenance.get('tta')} but these predictions use TTA {made['tta']}")
    if made["kind"] == "single":
        if kind == "ensemble":
            problems.append(f"it was tuned on the ensemble of {members} but {model} is one model")
        elif kind == "out_of_fold" and made["members"][0] not in members:
            problems.append(f"it was tuned on out-of-fold predictions of {members}, and {model} is none of them")
    elif kind == "single":
        problems.append(f"it was tuned on one model ({', '.join(members)}) but these predictions are an ensemble")
    elif sorted(members) != sorted(made["members"]):
        problems.append(f"it was tuned on predictions of {members} but this ensemble is {made['members']}")
    elif kind == "ensemble":
        tuned_mix = (provenance.get("weights"), provenance.get("average", "probabilities"))
        made_mix = (made.get("weights"), made.get("average", "probabilities"))
        if tuned_mix != made_mix:
            problems.append(f"it was tuned on the ensemble with (weights, average) {tuned_mix} but this is {made_mix}")
    if not problems:
        return
    message = (
        f"The mask rule of {model} does not fit these predictions: {'; '.join(problems)}. Tune one on predictions "
        "made this way (cxrseg evaluate --search-postprocess with the same --model and --tta), or pass "
        "--allow-rule-mismatch to apply it anyway."
    )
    _refuse(message, mismatch)


def _refuse(message: str, mismatch: str) -> None:
    """A rule that does not fit: :class:`ModelLoadError` with ``message`` (mismatch "error"), or a warning ("warn")."""
    if mismatch == "error":
        raise ModelLoadError(message)
    logger.warning(message)


def check_score_size(rule: MaskRule, score_size: str, model: str, *, mismatch: str = "error") -> None:
    """Refuse to score ``rule`` at ``score_size`` ("original" or "working", as
    :func:`cxrseg.evaluation.engine.effective_score_size` gives it) when it was tuned at the other: its
    ``provenance`` records the ``score_size`` its search scored at, and ``min_area`` tuned on one size's pixels is
    not the best on the other's. A rule that records none (tuned before cxrseg recorded it, or by hand) is not
    checked. mismatch: as :func:`check_rule`'s."""
    tuned = (getattr(rule, "provenance", None) or {}).get("score_size")
    if tuned is None or tuned == score_size:
        return
    message = (
        f"The mask rule of {model} was tuned on predictions scored at the {tuned} size, but this evaluation scores "
        f"at the {score_size} size. Evaluate with --score-size {tuned}, tune one at this size (cxrseg evaluate "
        "--search-postprocess), or pass --allow-rule-mismatch to apply it anyway."
    )
    _refuse(message, mismatch)
