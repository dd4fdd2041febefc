"""``python -m herocollector``: the command line (see :mod:`herocollector.cli`)."""

import sys

from .cli import main

sys.exit(main())
