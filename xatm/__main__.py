"""``python -m xatm``: the ``xatm`` command (coordinator, participant agent, demo, bench)."""

import sys

from xatm.coordinator.cli.main import main

sys.exit(main())
