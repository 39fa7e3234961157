"""`python -m optimum_rku.cli`: the `optimum-rku` console script."""

import sys

from optimum_rku.cli.registry import main

sys.exit(main())
