"""``python -m damselfly.services.cli``: the ``damselfly`` command without its console script."""

import sys

from damselfly.services.cli.main import main

sys.exit(main())
