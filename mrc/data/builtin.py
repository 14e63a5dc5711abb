"""Built-in data sets that need no download: bundled, generated locally, or synthetic.

Every builder has the signature `build(seed, **kwargs) -> dict` and returns `x` (N, *shape)
float32 and `y` (N,) int64 (float32 targets for the regression sets `linear` and `surface`),
plus `x_test` / `y_test` when the set comes with a predefined held-out split (only `mnist1d`
here). Builders only make examples; splitting into training and
validation, class subsets, normalisation and batching belong to the loader (`mrc.data.loader`).
The sets read from files on disk (`mnist`, `fashion_mnist`, `cifar10`, `cifar100`) are registered
in the same table by `mrc.data.disk`.

The 2-D sets (`levelsets`, `peaks`, `spirals`) follow the layer-parallel training seed: points in
[-3, 3]², labelled by the level sets of a smooth function, small enough for CPU experiments. The
seed's own level-set problem (its authors' reference code, LayerParallelLearning's
examples/peaks) is `peaks`; `levelsets` is a harder field of the same kind (a width-8 ODE-ResNet
that fits `peaks` to ≈ 0.96 reaches ≈ 0.88 on it, see docs/reproductions/mgrit.md).
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np

from mrc.registry import Param, Registry

DATASETS = Registry("data set")
"""Built-in data sets: `data NAME(...)` in a spec names one of these."""

Arrays = dict[str, Any]
Field = Callable[[np.ndarray, np.ndarray], np.ndarray]

BOX = 3.0
"""The 2-D sets live in the square [-BOX, BOX]²."""

_GRID = 601
"""Points per axis of the reference grid that fixes the level-set thresholds."""


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed % 2**64)


# ---- bundled and locally generated real data ---------------------------------------------------

@DATASETS.register(
    "digits",
    Param("shape", "choice", "flat", doc="`flat` gives (64,) vectors, `image` (1, 8, 8) images",
          choices=("flat", "image")),
    doc="sklearn's bundled 8×8 handwritten digits (1797 examples, 10 classes), pixels in [0, 1]",
)
def digits(seed: int, shape: str = "flat") -> Arrays:
    """sklearn's digits, shipped with sklearn (no download); the seed does not change the data."""
    pixels, target = _digits_arrays()
    x = pixels.astype(np.float32) / 16.0
    if shape == "image":
        x = x.reshape(-1, 1, 8, 8)
    return {"x": x, "y": target.astype(np.int64), "classes": 10}


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's `digits.csv.gz` read straight from its package folder, as `load_digits` reads it
    (64 pixel columns, then the label), without importing `sklearn.datasets` (≈ 2 s of imports
    for a 100 KB file); `load_digits` itself where the file is not where sklearn keeps it."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        file = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if file.is_file():
            table = np.loadtxt(file, delimiter=",")
            return table[:, :-1], table[:, -1].astype(int)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.asarray(bunch.data), np.asarray(bunch.target)


@DATASETS.register(
    "mnist1d",
    Param("samples", "int", 5000, doc="examples in all; 80% training, 20% the test split",
          lo=10),
    doc="MNIST-1D (40-sample 1-D digit signals, 10 classes) generated locally, with a test split",
)
def mnist1d(seed: int, samples: int = 5000) -> Arrays:
    """MNIST-1D made by `mnist1d.data.make_dataset` from the seed; its download is never used.

    `make_dataset` reseeds Python's and numpy's global generators, so their states are saved and
    restored: loading data must not perturb any other randomness of the run.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = int(samples)
    args.seed = seed % 2**32
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {
        "x": np.asarray(data["x"], dtype=np.float32),
        "y": np.asarray(data["y"], dtype=np.int64),
        "x_test": np.asarray(data["x_test"], dtype=np.float32),
        "y_test": np.asarray(data["y_test"], dtype=np.int64),
        "classes": 10,
    }


# ---- 2-D level-set classification -------------------------------------------------------------

def wavy_bowl(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """f(x, y) = (x² + y²)/4 + sin(2x)·cos(2y): rings around the origin with wavy borders.

    The bowl makes the level sets nested rings; the sine term bends them so that no class is
    convex and a linear classifier cannot separate them.
    """
    return (x**2 + y**2) / 4.0 + np.sin(2.0 * x) * np.cos(2.0 * y)


def peaks_function(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """MATLAB's `peaks`: a sum of three Gaussian bumps, two peaks and a valley."""
    return (3.0 * (1.0 - x) ** 2 * np.exp(-(x**2) - (y + 1.0) ** 2)
            - 10.0 * (x / 5.0 - x**3 - y**5) * np.exp(-(x**2) - y**2)
            - np.exp(-((x + 1.0) ** 2) - y**2) / 3.0)


@functools.lru_cache(maxsize=64)
def level_thresholds(field: Field, classes: int) -> np.ndarray:
    """The `classes - 1` values of `field` that cut [-3, 3]² into equal-area level sets.

    They are quantiles of the field over a fixed fine grid, not over the sample, so the label of
    a point depends on the point alone (not on the seed or the sample size), and uniformly drawn
    points fall into every class with equal probability.
    """
    axis = np.linspace(-BOX, BOX, _GRID)
    gx, gy = np.meshgrid(axis, axis)
    return np.quantile(field(gx, gy).ravel(), np.arange(1, classes) / classes)


def level_sets(field: Field, seed: int, samples: int, classes: int) -> Arrays:
    """Uniform points in [-3, 3]², labelled by the level set of `field` they fall in."""
    points = _rng(seed).uniform(-BOX, BOX, size=(samples, 2))
    values = field(points[:, 0], points[:, 1])
    labels = np.searchsorted(level_thresholds(field, classes), values, side="right")
    return {"x": points.astype(np.float32), "y": labels.astype(np.int64), "classes": classes}


@DATASETS.register(
    "levelsets",
    Param("samples", "int", 5000, doc="points drawn uniformly in [-3, 3]²", lo=1),
    Param("classes", "int", 5, doc="level sets, i.e. classes (of equal area)", lo=2, hi=64),
    doc="points in [-3, 3]² labelled by level sets of (x²+y²)/4 + sin(2x)·cos(2y) (harder than `peaks`)",
)
def levelsets(seed: int, samples: int = 5000, classes: int = 5) -> Arrays:
    """A level-set classification in the layer-parallel seed's format: 5000 points, 5 classes.

    The seed's reference problem is `peaks`; this field bends its rings into a grid of wavy bumps
    and needs a wider or longer-trained network for the same accuracy. Labels are the level sets
    of `wavy_bowl`, cut at thresholds of equal area (see
    `level_thresholds`), so the classes are balanced up to sampling noise.
    """
    return level_sets(wavy_bowl, seed, samples, classes)


@DATASETS.register(
    "peaks",
    Param("samples", "int", 5000, doc="points drawn uniformly in [-3, 3]²", lo=1),
    Param("classes", "int", 5, doc="level sets, i.e. classes (of equal area)", lo=2, hi=64),
    doc="points in [-3, 3]² labelled by level sets of MATLAB's peaks function (the seed's level sets)",
)
def peaks(seed: int, samples: int = 5000, classes: int = 5) -> Arrays:
    """Level sets of MATLAB's `peaks`: the layer-parallel seed's level-set problem (its reference
    code's examples/peaks: 5000 training points, 5 classes)."""
    return level_sets(peaks_function, seed, samples, classes)


@DATASETS.register(
    "spirals",
    Param("samples", "int", 2000, doc="points in all, shared evenly among the arms", lo=2),
    Param("classes", "int", 2, doc="interleaved spiral arms, one class each", lo=2, hi=8),
    Param("noise", "float", 0.1, doc="standard deviation of Gaussian noise added to each point",
          lo=0.0),
    doc="interleaved 2-D spiral arms, one class per arm",
)
def spirals(seed: int, samples: int = 2000, classes: int = 2, noise: float = 0.1) -> Arrays:
    """Arm k is r(t) = 3t, angle 3πt + 2πk/classes for t uniform in [0, 1], plus noise."""
    rng = _rng(seed)
    labels = np.arange(samples) % classes
    t = rng.uniform(0.0, 1.0, size=samples)
    angle = 3.0 * math.pi * t + 2.0 * math.pi * labels / classes
    radius = BOX * t
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    points += noise * rng.standard_normal(size=points.shape)
    order = rng.permutation(samples)
    return {"x": points[order].astype(np.float32), "y": labels[order].astype(np.int64),
            "classes": classes}


# ---- regression: float targets (a `loss mse` / `l1` / `smooth_l1` spec) ------------------------

@DATASETS.register(
    "linear",
    Param("samples", "int", 2000, doc="examples", lo=1),
    Param("features", "int", 8, doc="inputs per example", lo=1),
    Param("outputs", "int", 2, doc="targets per example", lo=1),
    Param("noise", "float", 0.1, doc="standard deviation of Gaussian noise added to the targets",
          lo=0.0),
    doc="regression: standard Gaussian inputs x, float targets y = A x + b + noise (A, b from the seed)",
)
def linear(seed: int, samples: int = 2000, features: int = 8, outputs: int = 2,
           noise: float = 0.1) -> Arrays:
    """A linear map with Gaussian A (scaled by 1/√features) and b, both drawn from the seed."""
    rng = _rng(seed)
    a = rng.standard_normal(size=(features, outputs)) / math.sqrt(features)
    b = rng.standard_normal(size=outputs)
    x = rng.standard_normal(size=(samples, features))
    y = x @ a + b + noise * rng.standard_normal(size=(samples, outputs))
    return {"x": x.astype(np.float32), "y": y.astype(np.float32)}


@DATASETS.register(
    "surface",
    Param("samples", "int", 5000, doc="points drawn uniformly in [-3, 3]²", lo=1),
    Param("function", "choice", "peaks", doc="the surface: MATLAB's peaks or the wavy bowl of "
          "`levelsets`", choices=("peaks", "wavy_bowl")),
    Param("noise", "float", 0.0, doc="standard deviation of Gaussian noise added to the heights",
          lo=0.0),
    doc="regression: points in [-3, 3]² with the height of a smooth surface as a float target (N, 1)",
)
def surface(seed: int, samples: int = 5000, function: str = "peaks", noise: float = 0.0) -> Arrays:
    """The surfaces whose level sets label `peaks` and `levelsets`, as regression targets."""
    field = peaks_function if function == "peaks" else wavy_bowl
    rng = _rng(seed)
    points = rng.uniform(-BOX, BOX, size=(samples, 2))
    heights = field(points[:, 0], points[:, 1]) + noise * rng.standard_normal(size=samples)
    return {"x": points.astype(np.float32), "y": heights[:, None].astype(np.float32)}


# ---- synthetic tensors for timing -------------------------------------------------------------

@DATASETS.register(
    "synthetic",
    Param("shape", "ints", [3, 32, 32], doc="shape of one example", lo=1),
    Param("classes", "int", 10, doc="number of classes of the random labels", lo=1),
    Param("samples", "int", 1024, doc="number of examples", lo=1),
    doc="standard Gaussian tensors of any shape with uniformly random labels (for timing)",
)
def synthetic(seed: int, shape: list[int] | int = (3, 32, 32), classes: int = 10,
              samples: int = 1024) -> Arrays:
    """Noise with random labels: nothing to learn, but any shape, for timing and memory tests."""
    dims = [shape] if isinstance(shape, int) else [int(d) for d in shape]
    rng = _rng(seed)
    x = rng.standard_normal(size=(samples, *dims), dtype=np.float32)
    y = rng.integers(0, classes, size=samples, dtype=np.int64)
    return {"x": x, "y": y, "classes": classes}
