"""`python -m affectflow ...`: the same command line as `affectflow ...`."""

import sys

from affectflow.pipelines.cli import main

sys.exit(main())
