"""``accbench train eagle``: not implemented yet (see the EAGLE section of README.md)."""

from __future__ import annotations

from accbench.methods.core.errors import AccbenchError


def train_eagle(name: str, job):
    raise AccbenchError(f"{name}: training is not implemented yet; pass -o eagle.source=DIR with an "
                        "EAGLE-1/2 checkpoint or an accbench draft artifact")
