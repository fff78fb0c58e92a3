"""promptclip: prompt learning on frozen CLIP models."""
__version__ = "0.1.0"
