"""Baselines the paper compares against, and simple references on time-averaged features."""

from hearproto.baselines.probe import linear_probe, mean_features

__all__ = ["linear_probe", "mean_features"]
