"""Near-duplicate photographs: a perceptual hash per image, and the clusters it implies.

A dataset without patient ids (APTOS 2019) can hold the same eye more than once: the same
photograph re-exported at another size or exposure, sometimes graded differently. Split image
by image, one copy lands in training and the other in validation, and validation measures
recall of training images. ``clusters`` joins every pair of images whose hashes differ in at
most ``distance`` of their ``HASH_BITS`` bits (and, transitively, everything joined to them),
so the builder can keep each cluster in one split.

The hash is the DCT perceptual hash (pHash; Zauner, Steinebach and Hermann, "Rihamark:
perceptual image hash benchmarking", Proc. SPIE 7880, 2011, https://doi.org/10.1117/12.876617;
as the ``imagehash`` package's ``phash(hash_size=16)`` computes it,
https://github.com/JohannesBuchner/imagehash, here with OpenCV's orthonormal DCT): the
image's grey levels at 64 x 64, their 2-D DCT, and one bit per coefficient of the 16 x 16
lowest frequencies, set where the coefficient is above their median. It is computed on the
fundus disc cropped out of its black border, so the same photograph framed or padded
differently hashes alike. It does not survive rotation or mirroring, which is what is wanted
here: the two eyes of a patient are mirror images of each other, not copies.

Fundus photographs are alike at the lowest frequencies (a bright disc, an optic disc, a darker
macula), so the common 64-bit hash (8 x 8 coefficients) tells them apart poorly. On 150
synthetic photographs of one retina re-taken with other rotation, zoom and lighting, each also
exported seven other ways (resized, brighter, darker, re-encoded, re-framed), a 64-bit
distance of 6 kept 1046 of the 1050 copies but also joined 114 of the 11175 pairs of different
photographs; at 16 x 16 a distance of 24 of 256 bits kept 1048 of the copies and joined one
pair of different photographs (``python -m effdr_tf.data.near_duplicates`` prints the 256-bit
figures; ``tests/test_splits.py`` checks a sample). The distance was not measured on real
photographs of different patients: the clusters a build finds are listed in its manifest.json
for review.
"""

from __future__ import annotations

import collections

import cv2
import numpy as np

from effdr_tf.data import fundus

HASH_SIDE = 16
HASH_BITS = HASH_SIDE * HASH_SIDE
HASH_NAME = f"{HASH_BITS}-bit DCT pHash of the disc"
# Images whose hashes differ in at most this many bits are taken for one photograph (see the
# measurements above).
DEFAULT_DISTANCE = 24
# Side the hash needs the image decoded at: large JPEGs decode at 1/8 scale for a fraction of
# the cost of a full decode (``fundus.decode``).
DECODE_SIDE = 128


def image_hash(image: np.ndarray) -> bytes:
    """The ``HASH_BITS``-bit perceptual hash of an RGB uint8 image, packed into bytes."""
    try:
        x0, y0, x1, y1 = fundus.find_disc(image)
        image = image[y0:y1, x0:x1]
    except fundus.RejectedImageError:
        pass  # no disc to crop to: hash the whole frame
    gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    side = 4 * HASH_SIDE
    small = cv2.resize(gray, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:HASH_SIDE, :HASH_SIDE].ravel()
    return np.packbits(low > np.median(low)).tobytes()


def _array(hashes) -> np.ndarray:
    return np.frombuffer(b"".join(hashes), np.uint8).reshape(len(hashes), HASH_BITS // 8)


def distances(hashes: list[bytes]) -> np.ndarray:
    """The n x n matrix of Hamming distances between hashes."""
    values = _array(hashes)
    return np.bitwise_count(values[:, None] ^ values[None, :]).sum(axis=-1, dtype=np.int32)


def clusters(hashes: dict[str, bytes], distance: int = DEFAULT_DISTANCE) -> list[list[str]]:
    """Groups of two or more keys whose hashes are linked by steps of at most ``distance`` bits.

    Args:
        hashes: key (an image id) -> its hash (``image_hash``).
        distance: the largest Hamming distance between two hashes taken for one photograph.

    Returns:
        Each group's keys sorted, the groups sorted by their first key; keys alone are left
        out.
    """
    keys = sorted(hashes)
    values = _array([hashes[k] for k in keys]) if keys else None
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # One row at a time: memory stays linear in the number of images.
    for i in range(len(keys) - 1):
        apart = np.bitwise_count(values[i + 1 :] ^ values[i]).sum(axis=1, dtype=np.int32)
        for j in np.flatnonzero(apart <= distance) + i + 1:
            a, b = root(i), root(int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)
    members = collections.defaultdict(list)
    for i, key in enumerate(keys):
        members[root(i)].append(key)
    return sorted((g for g in members.values() if len(g) > 1), key=lambda g: g[0])


def _copies(image: np.ndarray) -> list[np.ndarray]:
    """Second exports of a photograph: resized, brighter, darker, re-encoded, re-framed."""
    h, w = image.shape[:2]
    ok, jpeg = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 60])
    assert ok
    third = cv2.resize(image, (w // 3, h // 3), interpolation=cv2.INTER_AREA)
    return [
        cv2.resize(image, (w * 2 // 3, h * 2 // 3), interpolation=cv2.INTER_AREA),
        np.clip(image * 1.1, 0, 255).astype(np.uint8),
        np.clip(image * 1.25, 0, 255).astype(np.uint8),
        (image * 0.85).astype(np.uint8),
        cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[..., ::-1],
        cv2.copyMakeBorder(image, 10, 10, 50, 50, cv2.BORDER_CONSTANT, value=0),
        cv2.resize(third, (w, h), interpolation=cv2.INTER_LINEAR),
    ]


def measure(count: int = 150, distance: int = DEFAULT_DISTANCE) -> str:
    """How often copies of a photograph fall outside ``distance`` and different photographs
    inside it, on ``count`` synthetic photographs (``data.synthetic``: one retina re-taken
    with other rotation, zoom, lighting and lesions, both eyes)."""
    from effdr_tf.data import synthetic

    images = [
        synthetic.generate(i % 5, i, seed=0, size=256, eye="left" if i % 2 else "right")[0]
        for i in range(count)
    ]
    hashes = [image_hash(im) for im in images]
    apart = distances(hashes)[np.triu_indices(count, 1)]
    moved = [
        int(distances([value, image_hash(copy)])[0, 1])
        for image, value in zip(images, hashes, strict=True)
        for copy in _copies(image)
    ]
    return (
        f"{HASH_NAME}, distance {distance}: copies within it {sum(m <= distance for m in moved)}"
        f" of {len(moved)} (largest move {max(moved)} bits); different photographs within it "
        f"{int((apart <= distance).sum())} of {apart.size} (closest {int(apart.min())} bits)"
    )


if __name__ == "__main__":
    print(measure())
