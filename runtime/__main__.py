"""`python -m runtime`: the function runtime."""

import sys

from runtime.loop import main

if __name__ == "__main__":  # handler workers are spawned processes that import this module too
    sys.exit(main())
