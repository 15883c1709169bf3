"""`python -m lrt.cli ...`: the same as the `lrt` console script."""
import sys

from lrt.cli import main

sys.exit(main())
