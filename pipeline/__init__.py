"""vidfeat: long-video TimeSformer feature extraction (see docs/ARCHITECTURE.md)."""
__version__ = "0.1.0"
