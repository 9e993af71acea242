"""Inference: whole-volume and sliding-window prediction, the coarse-to-fine cascade."""
