"""Progress messages for slow one-time work, and a quiet transformers while it runs."""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Callable, Iterator

Progress = Callable[[str], Any] | None


def say(progress: Progress, msg: str) -> None:
    """Tell ``progress`` (if any) about ``msg``; a failing callback never breaks a load."""
    if progress is not None:
        with contextlib.suppress(Exception):
            progress(msg)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' tqdm bars, info/warning logs and Python warnings for a while."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    gguf_logger = logging.getLogger("gguf")
    gguf_level = gguf_logger.level
    gguf_logger.setLevel(logging.ERROR)
    # The GGUF converter uses tqdm directly (not transformers' switchable one).
    gguf_mod, gguf_tqdm = None, None
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_mod  # type: ignore[no-redef]

        gguf_tqdm = getattr(gguf_mod, "tqdm", None)
        if gguf_tqdm is not None:
            gguf_mod.tqdm = _silent_tqdm
    except Exception:  # pragma: no cover - module moved in a later transformers
        gguf_mod = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
        gguf_logger.setLevel(gguf_level)
        if gguf_mod is not None and gguf_tqdm is not None:
            gguf_mod.tqdm = gguf_tqdm


def _silent_tqdm(iterable=None, *args, **kwargs):
    return iterable
