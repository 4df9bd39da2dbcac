"""``python -m jsemi``: the jsemi command line."""

import sys

from jsemi.cli import main

sys.exit(main())
