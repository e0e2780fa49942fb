"""User-facing errors: one clear line, exit code 2, no traceback. Defined here, in the core, so
that methods can raise them without importing the harness."""

from __future__ import annotations

import click


class AccbenchError(click.ClickException):
    """Bad input or a missing prerequisite. The CLI prints ``Error: <message>`` and exits 2."""

    exit_code = 2


class NeedsTraining(AccbenchError):
    """A method's artifacts (trained heads...) are missing. ``accbench run --train-missing``
    trains them with ``train_command`` instead of stopping."""

    def __init__(self, method: str, model: str, train_command: str | None = None):
        self.method, self.model = method, model
        self.train_command = train_command or f"accbench train {method} --model {model}"
        super().__init__(f"{method} needs trained artifacts for {model}: run `{self.train_command}` "
                         "(or pass --train-missing to `accbench run`)")
