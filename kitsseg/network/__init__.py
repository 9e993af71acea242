"""Networks: the VB-Net."""
from kitsseg.network.vbnet import VBNet, build_network

__all__ = ["VBNet", "build_network"]
