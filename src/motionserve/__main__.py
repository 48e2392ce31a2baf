"""`python -m motionserve ...`: the same command line as the `motionserve` script."""

import sys

from motionserve.cli import main

sys.exit(main())
