"""accbench: how much does each inference-acceleration method speed up generation on your
model and hardware, and what does it cost in quality."""

__version__ = "0.1.0"

import warnings as _warnings

# transformers 5.2x warns on every forward that `past_key_values=` goes away in 5.40; the
# dependency is capped below 5.40 (pyproject), so the warning is noise in every run's output.
_warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated", category=FutureWarning)
