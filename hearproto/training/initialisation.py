"""Where our model's prototypes start: the training side's choice, of which the model knows
nothing (it holds K prototypes, however chosen). Supervised, the class means of the training
clips; unsupervised, one of :data:`UNSUPERVISED_INITS`."""

from __future__ import annotations

import numpy as np
import torch

from hearproto.clustering import cepstral_clusters, pitch_invariant_kmeans
from hearproto.model import PrototypeModel

__all__ = ["UNSUPERVISED_INITS", "init_prototypes"]


#: How unsupervised prototypes start: K clips picked k-means++-style (the paper's code); the
#: centres of K-means on the clips with their mean level removed (then put back at the
#: average level), so that clusters follow spectral shape rather than loudness; or those
#: centres refined by K-means that is also blind to pitch shifts of up to an octave
#: (:func:`hearproto.clustering.pitch_invariant_kmeans`), so that clusters follow timbre
#: rather than register; or the mean clips of Ward clusters of standardised cepstral
#: statistics (:func:`hearproto.clustering.cepstral_clusters`).
UNSUPERVISED_INITS = ("kmeans++", "level-kmeans", "pitch-kmeans", "cepstral")


@torch.no_grad()
def init_prototypes(model: PrototypeModel, clip_means: np.ndarray, labels: np.ndarray | None,
                    seed: int, noise: float = 0.01, method: str = "kmeans++",
                    clip_stds: np.ndarray | None = None) -> np.ndarray | None:
    """Initialise the prototypes from the data ``clip_means`` ``(N, F)`` (time-averaged
    training clips): supervised (``labels`` given), prototype k starts at the mean of class k;
    unsupervised, by ``method`` (see :data:`UNSUPERVISED_INITS`). Then ``noise``·N(0, 1) is
    added. ``cepstral`` also needs ``clip_stds`` ``(N, F)``, each bin's deviation over time;
    its prototypes are the mean clip of each cluster. Returns, unsupervised, the cluster
    ``(N,)`` the initialisation put each clip in (k-means++: its nearest centre); supervised,
    None."""
    from sklearn.cluster import KMeans, kmeans_plusplus  # here: importing the package is quicker

    k = model.num_prototypes
    if method not in UNSUPERVISED_INITS:
        raise ValueError(f"method must be one of {UNSUPERVISED_INITS}, got {method!r}")
    if labels is not None:
        centres = np.stack([clip_means[labels == c].mean(0) if np.any(labels == c)
                            else clip_means.mean(0) for c in range(k)])
    else:
        if len(clip_means) < k:
            raise ValueError(f"{k} prototypes need at least {k} training clips, "
                             f"got {len(clip_means)}")
        means = clip_means.astype(np.float64)
        if method == "kmeans++":
            centres, _ = kmeans_plusplus(means, n_clusters=k, random_state=seed)
            clusters = ((means[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        elif method == "cepstral":
            if clip_stds is None:
                raise ValueError("the cepstral initialisation needs clip_stds")
            clusters = cepstral_clusters(means, np.asarray(clip_stds, dtype=np.float64), k,
                                         seed=seed)
            centres = np.stack([means[clusters == c].mean(0) for c in range(k)])
        else:
            levels = means.mean(axis=1, keepdims=True)
            fitted = KMeans(k, n_init=10, random_state=seed).fit(means - levels)
            centres, clusters = fitted.cluster_centers_, fitted.labels_
            if method == "pitch-kmeans":
                centres, clusters, _ = pitch_invariant_kmeans(
                    torch.from_numpy(means - levels), k, model.bins, seed=seed,
                    init=torch.from_numpy(centres))
                centres, clusters = centres.double().numpy(), clusters.numpy()
            centres = centres + levels.mean()
    generator = torch.Generator().manual_seed(seed)
    values = torch.as_tensor(centres, dtype=torch.float32)
    values += noise * torch.randn(values.shape, generator=generator)
    model.prototypes.copy_(values.to(model.prototypes.device))
    return None if labels is not None else np.asarray(clusters, dtype=np.int64)
