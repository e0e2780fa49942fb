"""User-facing errors: one clear line, exit code 2, no traceback."""

from __future__ import annotations

import click


class AccbenchError(click.ClickException):
    """Bad input or a missing prerequisite. The CLI prints ``Error: <message>`` and exits 2."""

    exit_code = 2
