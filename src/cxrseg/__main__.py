"""``python -m cxrseg`` is the ``cxrseg`` command."""

import sys

from cxrseg.cli import main

sys.exit(main())
