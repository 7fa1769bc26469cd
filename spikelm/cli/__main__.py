"""``python -m spikelm.cli``: the ``spikelm`` command."""
import sys

from . import main

sys.exit(main())
