"""``python -m services.cli``: the ``damselfly`` command without its console script."""

import sys

from services.cli.main import main

sys.exit(main())
