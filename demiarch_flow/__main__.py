"""``python -m demiarch_flow`` is the ``demiarch-flow`` command."""

import sys

from .cli.main import main

sys.exit(main())
