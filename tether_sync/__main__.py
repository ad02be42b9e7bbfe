"""``python -m tether_sync`` is the ``tether-sync`` command."""

import sys

from .cli import main

sys.exit(main())
