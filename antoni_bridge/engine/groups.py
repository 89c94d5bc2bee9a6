"""Spatially compact groups of a slide's tiles, for maps that score parts of a slide (evidence, zero-shot).

Recursive bisection: the tiles are split across the longer side of their bounding box at the quantile
that gives each half its share of the groups, until every part is one group. Groups come out compact
(near-square boxes), of nearly equal tile counts, and the same for the same coordinates (ties are broken
by position, never by chance), so a map is reproducible and no random seed needs recording.
"""

from __future__ import annotations

import numpy as np

from antoni_bridge.errors import BridgeError


def tile_groups(coords: np.ndarray, k: int) -> np.ndarray:
    """Labels (N,) in 0..min(k, N)-1 for tiles at level-0 `coords` (N, 2); label order follows the splits,
    so neighbouring labels are neighbouring places."""
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise BridgeError(f"Tile coordinates must be (tiles, 2), not {coords.shape}.", "give x, y per tile")
    if k < 1:
        raise BridgeError(f"{k} groups cannot hold any tile.", "ask for at least one group")
    labels = np.zeros(len(coords), dtype=np.int64)
    if len(coords):
        _split(coords, np.arange(len(coords)), min(k, len(coords)), 0, labels)
    return labels


def _split(coords: np.ndarray, members: np.ndarray, k: int, first: int, labels: np.ndarray) -> None:
    """Give `members` the labels first..first+k-1, each half of a split its share of them."""
    if k == 1:
        labels[members] = first
        return
    points = coords[members]
    axis = int(np.ptp(points[:, 1]) > np.ptp(points[:, 0]))  # split across the longer side
    order = members[np.lexsort((points[:, 1 - axis], points[:, axis]))]
    left_k = k // 2
    cut = round(len(order) * left_k / k)
    _split(coords, order[:cut], left_k, first, labels)
    _split(coords, order[cut:], k - left_k, first + left_k, labels)


def group_masks(labels: np.ndarray, groups: np.ndarray | list[int]) -> np.ndarray:
    """Keep-masks (len(groups), N): row i keeps every tile outside group `groups[i]`."""
    labels = np.asarray(labels)
    return labels[None, :] != np.asarray(groups)[:, None]
