"""File names of cxrseg's folders, in one place (as transformers keeps ``CONFIG_NAME``).

A dataset folder holds :data:`LABELS_FILENAME` and :data:`METADATA_FILENAME`; a training output folder (a Hub model
repo) holds :data:`RECIPE_FILENAME`, :data:`SPLITS_FILENAME`, :data:`POSTPROCESS_FILENAME` and the model card
:data:`CARD_FILENAME` and the baseline :data:`PRIOR_MASK_FILENAME`; a cross-validation folder holds
:data:`CV_FILENAME`, and each finished fold :data:`FOLD_RESULT_FILENAME`.
"""

import re

LABELS_FILENAME = "labels.json"  # the label set (cxrseg.labels.LabelSet)
METADATA_FILENAME = "metadata.csv"  # one row per image, written by `cxrseg prepare`
SPLITS_FILENAME = "splits.json"  # the train/val split or the K folds (cxrseg.data.splits)
RECIPE_FILENAME = "recipe.yaml"  # the resolved recipe (cxrseg.config)
POSTPROCESS_FILENAME = "postprocess.json"  # the mask rule (cxrseg.postprocessing)
CARD_FILENAME = "README.md"  # the model card (cxrseg.hub.card)
AVERAGING_FILENAME = "averaging.json"  # the checkpoints an averaged model folder averages (cxrseg.training.averaging)
CV_FILENAME = "cv.json"  # marks a cross-validation folder (cxrseg.inference.cv_folder)
FOLD_RESULT_FILENAME = "cv_fold.json"  # a fold that has finished training
ENSEMBLE_FILENAME = "ensemble.json"  # a CV folder's ensemble settings: member weights, what is averaged
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")  # transformers' PREFIX_CHECKPOINT_DIR-<step> (a test checks)
PRIOR_MASK_FILENAME = "prior_mask.png"  # the training set's mean mask at 0.5, the baseline (cxrseg.data.prior)
