"""User-facing errors (defined in the decoding core so methods can raise them)."""

from accbench.methods.core.errors import AccbenchError, NeedsTraining

__all__ = ["AccbenchError", "NeedsTraining"]
