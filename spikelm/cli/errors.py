"""The one user-error type of the command line."""
from __future__ import annotations


class CLIError(Exception):
    """A user error: ``spikelm`` prints it as one line (``spikelm CMD: error: ...``) and exits 2."""
