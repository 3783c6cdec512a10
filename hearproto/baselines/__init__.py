"""Baselines the paper compares against (Tables 2 and 3), and simple references on
time-averaged features."""

from hearproto.baselines.apnet import APNet
from hearproto.baselines.autoencoder import ConvAutoencoder
from hearproto.baselines.direct import DirectClassifier
from hearproto.baselines.probe import kmeans_clustering, linear_probe, mean_features

__all__ = ["APNet", "ConvAutoencoder", "DirectClassifier", "kmeans_clustering", "linear_probe",
           "mean_features"]
