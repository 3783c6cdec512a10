"""Baselines the paper compares against, and simple references on time-averaged features."""

from hearproto.baselines.probe import kmeans_clustering, linear_probe, mean_features

__all__ = ["kmeans_clustering", "linear_probe", "mean_features"]
