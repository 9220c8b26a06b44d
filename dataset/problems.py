"""What goes wrong while preparing a dataset, and how many examples of each problem a report names."""

from __future__ import annotations

MAX_EXAMPLES = 5  # skipped rows and images named in a summary; the rest are only counted


class PrepareError(Exception):
    """A source that cannot be prepared; the message names the file, column or row that is wrong."""


class OptionError(PrepareError):
    """Options that cannot work (together, or with this input); the message names the option to change.
    The command exits with status 2, like an argparse usage error."""
