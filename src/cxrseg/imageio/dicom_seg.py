"""Predictions as DICOM Segmentation objects (DICOM SEG), written with ``highdicom``, which PACS viewers (OHIF,
3D Slicer, Weasis) show over the radiograph they reference.

One SEG per source radiograph: a new series in the source's study (its patient, study and, where present, frame of
reference), one frame per segment at the source's size (``Rows`` x ``Columns``), each frame referencing the
source's SOP instance. One segment per model output, labelled with the class name and coded: category SNOMED CT
"Morphologically abnormal structure" (49755003); type the SNOMED CT concept of pydicom's code dictionary whose
keyword is the class name (``Pneumothorax`` 36118008, ``Nodule`` 27925004, ``Mass`` 4147007, ...), else a local
code of the coding scheme :data:`LOCAL_SCHEME` (value ``<task>-<index>``, meaning the class name). Algorithm type
AUTOMATIC, named cxrseg with the model's name.

Binary: 1 bit per pixel (the mask). Fractional (``PROBABILITY``): the probability stored as ``round(255 * p)``
(``MaximumFractionalValue`` 255); readers scale it back to [0, 1].
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from cxrseg.errors import DicomError
from cxrseg.files import atomic_write_bytes

LOCAL_SCHEME = "99CXRSEG"  # a private coding scheme ("99" prefix, DICOM PS3.16 8.2) for classes SNOMED CT lacks here
SEG_SERIES_NUMBER = 900  # the SEG's series number in the source's study (viewers list series by it)
MAX_FRACTIONAL_VALUE = 255
CONCEPT_KEYWORDS = {"effusion": "PleuralEffusion"}
"""Class name (lower case) → keyword of pydicom's SNOMED CT dictionary, where a dataset's class name is shorter
than the concept it means (ChestX-Det's "Effusion" is a pleural effusion)."""
# Type 2 attributes of the Patient and General Study modules that highdicom copies from the source image: a file
# that lacks them (non-conformant, e.g. some anonymised exports) gets them empty, as the standard allows for Type 2.
_PATIENT_STUDY_KEYWORDS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "AccessionNumber",
)


def segment_type(task: str, index: int, name: str) -> hd.sr.CodedConcept:
    """The SNOMED CT concept of pydicom's code dictionary whose keyword is :data:`CONCEPT_KEYWORDS`' entry for
    ``name`` or else ``name`` without spaces in title case (``"Pleural Effusion"`` → ``PleuralEffusion``); else the
    local code ``<task>-<index>`` of :data:`LOCAL_SCHEME`."""
    keyword = CONCEPT_KEYWORDS.get(name.lower()) or "".join(
        part[:1].upper() + part[1:] for part in name.replace("_", " ").split()
    )
    try:
        code = getattr(codes.SCT, keyword)
    except AttributeError:
        return hd.sr.CodedConcept(value=f"{task}-{index}"[:16], scheme_designator=LOCAL_SCHEME, meaning=name)
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme_designator, meaning=code.meaning)


def source_header(path: str | os.PathLike) -> Dataset:
    """The header of the source radiograph at ``path`` (pixels not read) as the SEG references it.

    Missing Type 2 patient/study attributes are added empty. A projection image (no ``ImagePositionPatient``) keeps
    its ``PixelSpacing`` only with a ``SliceThickness``: highdicom 0.28's reader refuses a Pixel Measures
    Sequence without one, which projection radiographs do not have; the SEG is then in the image's own pixel grid.
    """
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError) as error:
        raise DicomError(f"{path}: not a readable DICOM file: {error}") from error
    for keyword in _PATIENT_STUDY_KEYWORDS:
        if keyword not in header:
            setattr(header, keyword, "")
    if "ImagePositionPatient" not in header and "SliceThickness" not in header and "PixelSpacing" in header:
        del header.PixelSpacing
    return header


def write_dicom_seg(
    source: str | os.PathLike,
    path: str | os.PathLike,
    planes: np.ndarray,
    names: Sequence[str],
    *,
    task: str,
    fractional: bool = False,
    model_name: str = "cxrseg",
    software_version: str = "0",
) -> Path:
    """Write the DICOM SEG of one radiograph (module docstring) to ``path``, atomically; returns ``path``.

    source: the DICOM file predicted. planes: [K, H, W] at the source's size (``Rows``, ``Columns``), one plane per
    name, in order: masks 0/1 (binary) or probabilities float in [0, 1] (``fractional``). names: the class of each
    plane (segment k + 1). task: the model's task (local codes). model_name: the model (its Hub id or folder name),
    recorded as the algorithm's and device's model name. Raises :class:`~cxrseg.errors.DicomError` for a source that
    is not a readable single-frame image of that size.
    """
    header = source_header(source)
    planes = np.asarray(planes)
    shape = (int(header.get("Rows", 0)), int(header.get("Columns", 0)))
    if planes.ndim != 3 or planes.shape[0] != len(names) or planes.shape[1:] != shape:
        raise DicomError(
            f"{source}: the prediction's planes {planes.shape} do not fit the image ({len(names)} classes, "
            f"Rows x Columns {shape[0]} x {shape[1]})."
        )
    if int(header.get("NumberOfFrames", 1) or 1) > 1:
        raise DicomError(f"{source}: multi-frame DICOM; a SEG is written for single-frame radiographs only.")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"cxrseg {model_name}"[:64], version=software_version, family=codes.cid7162.ArtificialIntelligence
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=index + 1,
            segment_label=name[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=segment_type(task, index, name),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for index, name in enumerate(names)
    ]
    # highdicom takes [frames, H, W, segments]: one frame (the radiograph), the segments last.
    pixels = np.moveaxis(planes, 0, -1)[None]
    if fractional:
        pixels = np.clip(pixels.astype(np.float32), 0.0, 1.0)
    else:
        pixels = (pixels > 0).astype(np.uint8)
    try:
        seg = hd.seg.Segmentation(
            source_images=[header],
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL
            if fractional
            else hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segments,
            series_instance_uid=hd.UID(),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="cxrseg",
            manufacturer_model_name=model_name[:64],
            software_versions=software_version,
            device_serial_number="0",
            fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
            max_fractional_value=MAX_FRACTIONAL_VALUE,
            series_description=f"cxrseg {'probabilities' if fractional else 'masks'} (research use only)",
            omit_empty_frames=False,
        )
    except (ValueError, TypeError, AttributeError) as error:  # highdicom's checks of the source header
        raise DicomError(f"{source}: cannot write a DICOM SEG for this image: {error}") from error
    buffer = pydicom.filebase.DicomBytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return atomic_write_bytes(path, buffer.getvalue())
