"""Duplicate groups: exact (same sha256) and near (perceptual hashes within a distance).

Near-duplicates — the same X-ray re-encoded, resized or slightly cropped, or two shots of the
same patient — leak between splits just like exact copies. Each image gets a 256-bit DCT
perceptual hash (`imagehash.phash`, 16x16) at ingestion — 64 bits cannot tell chest X-rays
apart, which all share one anatomy —; two images whose hashes differ in at most
`max_distance` bits are linked, and groups are the connected components of exact and near links
(union-find), so a chain a~b~c is one group even if a and c are further apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import imagehash
import numpy as np
from PIL import Image

# Rows compared at once against all hashes: bounds memory at BLOCK x N x 4 words.
BLOCK = 1024
HASH_SIZE = 16  # a HASH_SIZE x HASH_SIZE bit DCT hash: 256 bits, 64 hex digits


def phash_hex(image: Image.Image) -> str:
    """The 256-bit perceptual hash of an image, as 64 hex digits."""
    return str(imagehash.phash(image, hash_size=HASH_SIZE))


def _hash_ints(hashes: Sequence[str]) -> np.ndarray:
    """Hex hashes as rows of 64-bit words (N x words)."""
    words = [[int(h[i : i + 16], 16) for i in range(0, len(h), 16)] for h in hashes]
    return np.array(words, dtype=np.uint64).reshape(len(hashes), -1)


def near_pairs(hashes: Sequence[str], max_distance: int) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose hashes differ in at most `max_distance` bits."""
    values = _hash_ints(hashes)
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(values), BLOCK):
        block = values[start : start + BLOCK]
        distance = np.bitwise_count(block[:, None, :] ^ values[None, :, :]).sum(axis=2)
        rows, cols = np.nonzero(distance <= max_distance)
        rows = rows + start
        keep = rows < cols
        pairs += zip(rows[keep].tolist(), cols[keep].tolist(), strict=True)
    return pairs


class _UnionFind:
    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:  # the smaller index leads: stable, order-independent labels
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


def group_labels(
    sha256s: Sequence[str], phashes: Sequence[str], max_distance: int | None
) -> tuple[list[int], set[int]]:
    """One label per image (the smallest index in its group), and the labels of groups
    that only near-duplicate links made (not exact copies alone). `None` turns near off."""
    uf = _UnionFind(len(sha256s))
    first_of: dict[str, int] = {}
    for index, digest in enumerate(sha256s):
        uf.union(first_of.setdefault(digest, index), index)
    exact_labels = [uf.find(i) for i in range(len(sha256s))]
    if max_distance is not None:
        for a, b in near_pairs(phashes, max_distance):
            uf.union(a, b)
    labels = [uf.find(i) for i in range(len(sha256s))]
    exact_sets: dict[int, set[int]] = {}
    for label, exact in zip(labels, exact_labels, strict=True):
        exact_sets.setdefault(label, set()).add(exact)
    near = {label for label, parts in exact_sets.items() if len(parts) > 1}
    return labels, near


def merge_by_key(labels: Sequence[int], keys: Sequence[str]) -> list[int]:
    """`labels` with every group joined to the groups of images sharing a non-empty key (the
    patient): the connected components of both kinds of link, labelled by smallest index."""
    uf = _UnionFind(len(labels))
    first_of: dict[str, int] = {}
    for index, (label, key) in enumerate(zip(labels, keys, strict=True)):
        uf.union(label, index)
        if key:
            uf.union(first_of.setdefault(key, index), index)
    return [uf.find(i) for i in range(len(labels))]
