"""accbench: how much does each inference-acceleration method speed up generation on your
model and hardware, and what does it cost in quality."""

__version__ = "0.1.0"
