"""`python -m ptum.cli ...`: the same as the `ptum` console script."""
import sys

from ptum.cli import main

sys.exit(main())
