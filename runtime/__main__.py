"""`python -m runtime train|verify` (see runtime.cli)."""

import sys

from runtime.cli import main

sys.exit(main())
