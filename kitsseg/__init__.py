"""kitsseg: multi-resolution VB-Net segmentation of kidneys, tumours and cysts in CT."""

__version__ = "0.1.0"
