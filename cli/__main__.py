"""``python -m cli``: the same as the ``retrainer`` script."""

import sys

from cli.main import main

sys.exit(main())
