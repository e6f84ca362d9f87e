"""The cxrseg web app as a Hugging Face Space (Gradio SDK): ``python app.py`` serves the model that the variable
CXRSEG_MODEL names (a Hub id or a folder), as ``cxrseg app --model MODEL`` does. README "Web app" has the Space's
settings."""

import os
import sys
from pathlib import Path

try:
    import cxrseg  # noqa: F401
except ImportError:  # a Space runs this file in a clone of the repository, where the package is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from cxrseg.errors import CxrsegError, UsageError, report

try:
    from cxrseg.app.web import launch, load_app

    if "CXRSEG_MODEL" not in os.environ:
        raise UsageError("set CXRSEG_MODEL to the model to serve: a Hub id (you/cxrseg-pneumothorax) or a folder.")
    demo = load_app(os.environ["CXRSEG_MODEL"])
except CxrsegError as error:  # one line, no traceback, as every cxrseg command
    sys.exit(report(error))

if __name__ == "__main__":
    launch(demo)
