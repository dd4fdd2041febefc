"""``python -m herocollector``: the command line (see :mod:`herocollector.cli.main`)."""

import sys

from herocollector.cli.main import main

sys.exit(main())
