"""`python -m runtime`: the function runtime."""

import sys

from runtime.loop import main

sys.exit(main())
