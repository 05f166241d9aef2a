"""The bundled real sample media: the ``mine`` job's default input.

Prepared (idempotently) from files that Debian and PyPI packages ship; nothing is downloaded:

* ``vtest.avi``: pedestrians seen by a fixed camera (768x576, 10 fps, 795 frames, MPEG-4 part 2),
  Debian ``opencv-doc``;
* ``box.mp4``, ``cup.mp4``: short H.264 clips, Debian ``opencv-doc`` (shipped gzipped);
* ``china.jpg``, ``flower.jpg``: scikit-learn's two sample photos (427x640);
* ``fashion-mnist/t10k-NNNNN.png``: the first ``FASHION_MNIST_COUNT`` Fashion-MNIST test images
  (Debian ``dataset-fashion-mnist``), with their labels in ``fashion-mnist/labels.csv``.

Run ``python -m beam_pipelines.local.sample_media`` to prepare them and print the default globs.
"""
import argparse
import csv
import gzip
import io
import os
import shutil
import struct
import tempfile

import numpy as np

from beam_pipelines.local.home import media_dir
from transforms.score.model_base import DEFAULT_MODEL_CLASS_NAMES

OPENCV_DATA = "/usr/share/doc/opencv-doc/examples/data"
OPENCV_HTML = "/usr/share/doc/opencv-doc/opencv4/html"
FASHION_MNIST_COUNT = 300
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = DEFAULT_MODEL_CLASS_NAMES  # the bundled model is trained on these labels


def read_idx(path: str) -> np.ndarray:
    """Reads a (gzipped) IDX file (LeCun's MNIST format) into a uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    _, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if dtype_code != 0x08:
        raise ValueError(f"{path}: only unsigned-byte IDX files are supported, got 0x{dtype_code:02x}")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_split(split: str, data_dir: str = FASHION_MNIST_DIR):
    """Returns ``(images uint8 (N, 28, 28), labels uint8 (N,))`` for split ``train`` or ``t10k``."""
    images = read_idx(os.path.join(data_dir, f"{split}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, f"{split}-labels-idx1-ubyte.gz"))
    return images, labels


def _atomic_copy(src_open, dst):
    if os.path.exists(dst):
        return
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dst), prefix=".tmp-")
    with os.fdopen(fd, "wb") as out, src_open() as src:
        shutil.copyfileobj(src, out)
    os.replace(tmp, dst)


def _require(path, package):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: install the Debian package {package} "
                                f"(scripts/setup.sh does)")
    return path


def prepare(directory: str = None, fashion_mnist_count: int = FASHION_MNIST_COUNT) -> list:
    """Writes the sample media under ``directory`` (default ``$ACTIVEBEAM_HOME/media``).

    Returns the list of globs that match them. Raises ``FileNotFoundError`` naming the Debian
    package to install when a source file is missing.
    """
    import cv2
    import sklearn.datasets

    directory = directory or media_dir()
    vtest = _require(os.path.join(OPENCV_DATA, "vtest.avi"), "opencv-doc")
    _atomic_copy(lambda: open(vtest, "rb"), os.path.join(directory, "vtest.avi"))
    for clip in ("box", "cup"):
        src = _require(os.path.join(OPENCV_HTML, f"{clip}.mp4.gz"), "opencv-doc")
        _atomic_copy(lambda src=src: gzip.open(src, "rb"), os.path.join(directory, f"{clip}.mp4"))
    images_dir = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    for photo in ("china.jpg", "flower.jpg"):
        src = os.path.join(images_dir, photo)
        _atomic_copy(lambda src=src: open(src, "rb"), os.path.join(directory, photo))

    fmnist_dir = os.path.join(directory, "fashion-mnist")
    labels_csv = os.path.join(fmnist_dir, "labels.csv")
    if not os.path.exists(labels_csv):
        _require(FASHION_MNIST_DIR, "dataset-fashion-mnist")
        images, labels = load_split("t10k", FASHION_MNIST_DIR)
        os.makedirs(fmnist_dir, exist_ok=True)
        rows = []
        for i in range(min(fashion_mnist_count, len(images))):
            name = f"t10k-{i:05d}.png"
            ok, png = cv2.imencode(".png", images[i])
            if not ok:
                raise RuntimeError(f"could not encode Fashion-MNIST image {i} as PNG")
            _atomic_copy(lambda data=png.tobytes(): io.BytesIO(data), os.path.join(fmnist_dir, name))
            rows.append((name, int(labels[i]), CLASS_NAMES[labels[i]]))
        fd, tmp = tempfile.mkstemp(dir=fmnist_dir, prefix=".tmp-")
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(("file", "label", "class_name"))
            writer.writerows(rows)
        os.replace(tmp, labels_csv)
    return default_globs(directory)


def default_globs(directory: str = None) -> list:
    directory = directory or media_dir()
    return [os.path.join(directory, pattern)
            for pattern in ("*.avi", "*.mp4", "*.jpg", os.path.join("fashion-mnist", "*.png"))]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Prepare activebeam's bundled sample media.")
    parser.add_argument("--media_dir", default=None)
    args = parser.parse_args(argv)
    for pattern in prepare(args.media_dir):
        print(pattern)


if __name__ == "__main__":
    main()
