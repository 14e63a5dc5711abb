"""Data transforms a spec asks for with `data …(augment = [NAME(…), …])`.

Two families, both drawn from the run's seed only:

- a *data-set transform* (`patch`) changes the examples once, when the data are loaded: a fixed
  per-example transform of the training and validation splits (the clean split is kept as the
  `clean` evaluation set);
- *per-sample transforms* (`random_crop`, `hflip`, `cutout`, `normalize`) run on the fly, on every
  training batch. Their random draws are a pure function of (run seed, epoch, sample index) —
  a counter-based hash (`draws`) computed with torch integer ops — so the in-memory path applies
  them to a whole batch at once on the device, the streamed path to one sample at a time in a
  DataLoader worker, and both give the same numbers whatever the number of workers.

Evaluation sets (the validation split, `eval` sets, the summary's training metrics) see only the
deterministic counterpart of the pipeline (`Augment.evaluate`): `normalize` applies, a
`random_crop` smaller than the image becomes a centre crop, flips and cutout do nothing. An `eval`
set that wants the random transforms too says `augment = true` in its block.

Patch augmentation follows Li, Wei & Ma (NeurIPS 2019, "Towards explaining the regularization
effect of initial large learning rate"; their code: cwein3/large-lr-code), the data of the
multirate seed's "latent multiple time scales" experiment. Each example of a split is one of three
kinds, in fixed proportions —

- *free*: the image alone (no patch), a fraction `free` of the examples (default 20 %);
- *only*: a patch on a blank image (zeros elsewhere), a fraction `only` (default 16 %);
- *both*: the image with the patch pasted over it, the rest (default 64 %).

The default, `style = paper`, is the paper's patch (`PaperPatches`): a `size`×`size` (7×7) square
at the centre of the image, on every channel, of value z + s·v_y — z one pattern shared by every
class (entries `z`·N(0, 1), `z` = 1.25), v_y a pattern of class y (entries U(−`v`, `v`),
`v` = 0.1) and s = ±1 drawn per example. The class shows only in a small, sign-symmetric
perturbation of a large shared pattern: hard to fit, which is why a small learning rate (that
memorises it) and a large one (that learns the images) differ. A patch-only example is
z + s·`only_scale`·u·v_y with u ~ U(0, 1) drawn per example (`only_scale` = 1.75). The paper
normalises the images first, so this patch is pasted *after* the loader's `normalize` and after
`normalize(mean, std)` steps that follow it in the `augment` list (its values are in normalised
units, and the training statistics are the unpatched images'). The `patch_only` evaluation set
is measured as the authors do: blank images sent through the patch transform, so a fraction
only / (1 − free) of them (0.2) carry z + s·`only_scale`·u·v_y and the rest z + s·v_y.

Checked against cwein3/large-lr-code (data_util.py `PatchAugmentFixed`, `pm_sym_pattern`,
`FixedAugmentDataset`, `TransformOnlyDataset`; train_patches.py): the window starts at
int(16 − size/2) on their 32×32 images, ⌊(H − size)/2⌋ here (the same on 32×32 and 28×28); the
patch replaces the pixels; the images are normalised first; z = 1.25·N(0, 1) and v_y = U(−v, v)
per channel; s = ±1 and u ~ U(0, 1) per example. Their data set redraws a patched example's
kind (both or only, among the fixed 80 % that are patched), its s and its u at every access,
i.e. every epoch: `redraw = true` does the same on the training split (`RedrawPatch`, a
per-sample transform drawn from (seed, epoch, index)); by default every draw is made once, when
the data are loaded, so an `only` example never shows its image. They draw the 80 % by a
per-example coin; here exact counts (`kinds`).

`style = square` is a variant that is not the paper's (`Patches`): every class gets a distinct
`size`×`size` square of 0/1 values (`size` = 3), pasted `margin` pixels (1) from the top and left
border before `normalize`. It is linearly separable, and every learning rate learns it at once.

Every draw (patterns, kinds, signs and scales) comes from the run's seed only, so a run is
reproducible and the clean and patch-only evaluation sets are the same for every spec with that
seed.

`AUGMENTS` lists the transforms; a spec's `augment` value reaches the loader as a plain dict
(`{"kind": "patch", "style": "paper", …}`) or a list of them, which `make_augment` turns into the
`Patches` / `PaperPatches` (or None) and the per-sample `Augment` pipeline (or None).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from mrc import lazy
from mrc.data.files import DataError
from mrc.registry import Param, Registry

torch = lazy.module("torch")  # imported on first use: the checker reads AUGMENTS without torch
F = lazy.module("torch.nn.functional")

AUGMENTS = Registry("data transform")
"""Built-in data transforms: `augment = NAME(…)` in a `data` statement names one of these."""

KIND_FREE, KIND_ONLY, KIND_BOTH = 0, 1, 2
"""The kind of each augmented example: no patch, the patch alone, image and patch."""

_PATTERN_STREAM = 7_001
"""Random streams of the patch transform (beside the loader's split and limit streams)."""

_PAPER_STREAM = 7_101
"""Random streams of the paper's patch: z, the class patterns v_y, then the per-example signs and
scales of split `stream` (`_PAPER_STREAM + 8 + stream`)."""

PATCH_ONLY_STREAM = 5
"""The split number of the `patch_only` evaluation set's per-example draws (0 and 1 are the
training and validation splits)."""

_MAX_REDRAWS = 1000


class AugmentError(DataError):
    """A data transform does not fit the data (reported at the spec's `augment` value)."""


def _stream(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed % 2**63, stream])


@dataclass(frozen=True, slots=True)
class Patches:
    """The class patches of one run and how they are placed and mixed into a split.

    patterns: (classes, C, size, size) float32 of 0/1; margin: offset from the top-left border;
    free / only: the fractions of patch-free and patch-only examples (the rest has both).
    """

    patterns: torch.Tensor
    margin: int
    free: float
    only: float
    seed: int

    after_normalize: ClassVar[bool] = False
    """Pasted before the loader's `normalize` (the statistics are the patched split's)."""

    @property
    def size(self) -> int:
        return int(self.patterns.shape[-1])

    def kinds(self, n: int, stream: int) -> torch.Tensor:
        """The kind of each of `n` examples: exactly round(free·n) free, round(only·n) only,
        the rest both, in a seeded random order (`stream` tells the splits apart)."""
        return _kinds(self.free, self.only, n, self.seed, stream)

    def paste(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """`x` with each example's class patch pasted over it (a copy)."""
        out = x.clone()
        m, s = self.margin, self.size
        out[:, :, m:m + s, m:m + s] = self.patterns[y]
        return out

    def only_patch(self, x: torch.Tensor, y: torch.Tensor,
                   stream: int = PATCH_ONLY_STREAM) -> torch.Tensor:
        """Blank images of `x`'s shape carrying only each example's class patch (`stream` is
        unused: the square has no per-example draws)."""
        return self.paste(torch.zeros_like(x), y)

    def apply(self, x: torch.Tensor, y: torch.Tensor, stream: int) -> torch.Tensor:
        """A split augmented in the fixed proportions (see the module docstring)."""
        kinds = self.kinds(len(y), stream)
        out = x.clone()
        both, only = kinds == KIND_BOTH, kinds == KIND_ONLY
        out[both] = self.paste(x[both], y[both])
        out[only] = self.only_patch(x[only], y[only])
        return out


def _kinds(free: float, only: float, n: int, seed: int, stream: int) -> torch.Tensor:
    n_free = round(free * n)
    n_only = min(n - n_free, round(only * n))
    kinds = np.full(n, KIND_BOTH, dtype=np.int64)
    kinds[:n_free] = KIND_FREE
    kinds[n_free:n_free + n_only] = KIND_ONLY
    return torch.from_numpy(_stream(seed, _PATTERN_STREAM + 1 + stream).permutation(kinds))


@dataclass(frozen=True, slots=True)
class PaperPatches:
    """Li, Wei & Ma's patch (see the module docstring): z + s·v_y at the centre of the image.

    z: (C, size, size) float32, shared by every class; v: (classes, C, size, size), the class
    patterns; only_scale: the factor of v_y in a patch-only example (times u ~ U(0, 1));
    free / only: the fractions of patch-free and patch-only examples (the rest has both).
    """

    z: torch.Tensor
    v: torch.Tensor
    only_scale: float
    free: float
    only: float
    seed: int
    redraw: bool = False

    after_normalize: ClassVar[bool] = True
    """Pasted after the loader's `normalize`, as the paper normalises the images first."""

    @property
    def size(self) -> int:
        return int(self.z.shape[-1])

    def kinds(self, n: int, stream: int) -> torch.Tensor:
        """The kind of each of `n` examples, as `Patches.kinds` (the same draws)."""
        return _kinds(self.free, self.only, n, self.seed, stream)

    def draws(self, n: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The sign s = ±1 (equally likely) and the scale u ~ U(0, 1) of each of `n` examples of
        split `stream` (every example gets both; only patch-only examples use u)."""
        rng = _stream(self.seed, _PAPER_STREAM + 8 + stream)
        signs = rng.integers(0, 2, size=n) * 2 - 1
        scales = rng.random(n)
        return (torch.from_numpy(signs).to(torch.float32),
                torch.from_numpy(scales).to(torch.float32))

    def window(self, shape: torch.Size | tuple[int, ...]) -> tuple[slice, slice]:
        """The rows and columns of the centre `size`×`size` window of images of `shape`."""
        h, w = shape[-2:]
        top, left = (h - self.size) // 2, (w - self.size) // 2
        return slice(top, top + self.size), slice(left, left + self.size)

    def values(self, y: torch.Tensor, signs: torch.Tensor, factor: torch.Tensor | float = 1.0
               ) -> torch.Tensor:
        """The patches z + s·factor·v_y of labels `y` (B, C, size, size)."""
        coef = (signs * factor).view(-1, 1, 1, 1)
        return self.z + coef * self.v[y]

    def apply(self, x: torch.Tensor, y: torch.Tensor, stream: int) -> torch.Tensor:
        """A split augmented in the fixed proportions: `both` examples get z + s·v_y over the
        centre, `only` examples are zeroed and get z + s·only_scale·u·v_y."""
        kinds = self.kinds(len(y), stream)
        signs, scales = self.draws(len(y), stream)
        rows, cols = self.window(x.shape)
        out = x.clone()
        both, only = kinds == KIND_BOTH, kinds == KIND_ONLY
        out[only] = 0.0
        factor = torch.where(only, self.only_scale * scales, torch.ones_like(scales))
        patched = both | only
        out[patched, :, rows, cols] = self.values(y[patched], signs[patched], factor[patched])
        return out

    def only_patch(self, x: torch.Tensor, y: torch.Tensor,
                   stream: int = PATCH_ONLY_STREAM) -> torch.Tensor:
        """Blank images of `x`'s shape carrying only the class patch of each label, as the
        authors measure patch accuracy (`TransformOnlyDataset` in cwein3/large-lr-code: blank
        images sent through the training patch transform): a fraction only / (1 − free) of them
        (0.2 by default) z + s·only_scale·u·v_y, the others z + s·v_y, with s, u and which is
        which drawn per example from the seed (split `stream`)."""
        n = len(y)
        signs, scales = self.draws(n, stream)
        patched = 1.0 - self.free
        share = 1.0 if patched <= 0 else min(1.0, self.only / patched)
        scaled = _kinds(0.0, share, n, self.seed, _PAPER_STREAM + 8 + stream) == KIND_ONLY
        factor = torch.where(scaled, self.only_scale * scales, torch.ones_like(scales))
        rows, cols = self.window(x.shape)
        out = torch.zeros_like(x)
        out[:, :, rows, cols] = self.values(y, signs, factor)
        return out


def paper_patterns(seed: int, classes: int, channels: int, size: int, z: float, v: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared pattern z (channels, size, size), entries z·N(0, 1), and the class patterns
    (classes, channels, size, size), entries U(−v, v), from `seed`."""
    shared = _stream(seed, _PAPER_STREAM).standard_normal((channels, size, size)) * z
    per_class = _stream(seed, _PAPER_STREAM + 1).uniform(-v, v, (classes, channels, size, size))
    return (torch.from_numpy(shared).to(torch.float32),
            torch.from_numpy(per_class).to(torch.float32))


def class_patterns(seed: int, classes: int, channels: int, size: int) -> torch.Tensor:
    """`classes` distinct, non-zero 0/1 patterns of shape (channels, size, size) from `seed`."""
    bits = channels * size * size
    if bits < 64 and 2**bits - 1 < classes:
        raise AugmentError(f"a {size}×{size} patch on {channels} channel(s) has only {2**bits - 1} "
                        f"distinct patterns, fewer than the {classes} classes; make `size` larger")
    rng = _stream(seed, _PATTERN_STREAM)
    rows: list[tuple[int, ...]] = []
    for _ in range(_MAX_REDRAWS * classes):
        if len(rows) == classes:
            break
        row = tuple(int(b) for b in rng.integers(0, 2, size=bits))
        if any(row) and row not in rows:
            rows.append(row)
    else:  # pragma: no cover - only with a few more classes than patterns
        raise AugmentError(f"could not draw {classes} distinct patches of size {size}")
    return torch.tensor(rows, dtype=torch.float32).reshape(classes, channels, size, size)


PATCH_STYLES = ("paper", "square")
"""`paper`: Li, Wei & Ma's z + s·v_y at the centre; `square`: a distinct 0/1 square per class
(not the paper's)."""

PAPER_DEFAULTS = {"size": 7, "z": 1.25, "v": 0.1, "only_scale": 1.75, "redraw": False}
SQUARE_DEFAULTS = {"size": 3, "margin": 1}
"""The knobs left none take their style's default."""

PATCH_PARAMS = (
    Param("size", "int", None, doc="side of the square patch, in pixels (none: 7 for `paper`, 3 "
          "for `square`)", lo=1, nullable=True),
    Param("margin", "int", None, doc="`square` only: pixels between the patch and the top and left "
          "border (none: 1)", lo=0, nullable=True),
    Param("free", "float", 0.2, doc="fraction of examples without the patch", lo=0.0, hi=1.0),
    Param("only", "float", 0.16, doc="fraction of examples with the patch and no image content",
          lo=0.0, hi=1.0),
    Param("style", "choice", "paper", doc="`paper`: Li, Wei & Ma's z + s·v_y at the centre; "
          "`square`: a distinct 0/1 square per class (a variant, not the paper's)",
          choices=PATCH_STYLES),
    Param("z", "float", None, doc="`paper` only: z's entries are z·N(0, 1) (none: 1.25)", lo=0.0,
          nullable=True),
    Param("v", "float", None, doc="`paper` only: v_y's entries are U(−v, v) (none: 0.1)", lo=0.0,
          nullable=True),
    Param("only_scale", "float", None, doc="`paper` only: a patch-only example is "
          "z + s·only_scale·u·v_y, u ~ U(0, 1) (none: 1.75)", lo=0.0, nullable=True),
    Param("redraw", "bool", None, doc="`paper` only: redraw each patched training example's kind "
          "(both or only), s and u every epoch, as the authors' loader does (none: false, every "
          "draw made once at load)", nullable=True),
)


def patch_knobs_misplaced(style: str, settings: Mapping[str, Any]) -> list[str]:
    """The knobs given (not none) that the `style` does not have."""
    other = SQUARE_DEFAULTS.keys() - {"size"} if style == "paper" else PAPER_DEFAULTS.keys() - {"size"}
    return [k for k in sorted(other) if settings.get(k) is not None]


@AUGMENTS.register("patch", *PATCH_PARAMS,
                   doc="a patch (Li, Wei & Ma 2019) in free / only / both examples; "
                       "`style = square` is a separable 0/1 variant")
def patch(seed: int, classes: int, in_shape: tuple[int, ...], size: int | None = None,
          margin: int | None = None, free: float = 0.2, only: float = 0.16, style: str = "paper",
          z: float | None = None, v: float | None = None, only_scale: float | None = None,
          redraw: bool | None = None) -> Patches | PaperPatches:
    """The patches of a run: checks that the data are images and that the patch fits."""
    if len(in_shape) != 3:
        raise AugmentError(f"`patch` needs image data of shape (C, H, W), but examples have shape "
                        f"{tuple(in_shape)}" + (" (use `shape=image`)" if len(in_shape) == 1 else ""))
    if style not in PATCH_STYLES:
        raise AugmentError(f"unknown patch style `{style}`; styles are {', '.join(PATCH_STYLES)}")
    misplaced = patch_knobs_misplaced(style, {"margin": margin, "z": z, "v": v,
                                              "only_scale": only_scale, "redraw": redraw})
    if misplaced:
        raise AugmentError(f"`{misplaced[0]}` is not a knob of the `{style}` patch")
    if free + only > 1.0 + 1e-12:
        raise AugmentError(f"`free` + `only` = {free + only:g} is more than 1")
    channels, height, width = in_shape
    if style == "square":
        size = SQUARE_DEFAULTS["size"] if size is None else size
        margin = SQUARE_DEFAULTS["margin"] if margin is None else margin
        if margin + size > min(height, width):
            raise AugmentError(f"a {size}×{size} patch {margin} pixel(s) from the border does not "
                               f"fit in {height}×{width} images")
        return Patches(class_patterns(seed, classes, channels, size), margin, free, only, seed)
    size = int(PAPER_DEFAULTS["size"] if size is None else size)
    if size > min(height, width):
        raise AugmentError(f"a {size}×{size} patch is larger than the {height}×{width} images; "
                           f"make `size` at most {min(height, width)}")
    shared, per_class = paper_patterns(
        seed, classes, channels, size, PAPER_DEFAULTS["z"] if z is None else z,
        PAPER_DEFAULTS["v"] if v is None else v)
    return PaperPatches(shared, per_class, PAPER_DEFAULTS["only_scale"] if only_scale is None
                        else only_scale, free, only, seed, bool(redraw))


# ---- per-sample transforms ---------------------------------------------------------------------

_M32 = 0xFFFFFFFF
_SAMPLE_STREAM = 9_001
"""Random streams of the per-sample transforms: transform k of a list draws from streams
`_SAMPLE_STREAM + 16·k + j` (j: its j-th draw per sample)."""

EVAL_EPOCH = -1
"""The epoch whose draws an `eval` set asking for `augment = true` sees (the same at every
evaluation, so its metric is comparable over the run)."""


def _mul32(x: Any, c: int) -> Any:
    """(x · c) mod 2³² for 0 ≤ x, c < 2³², in int64 without overflow (16-bit halves)."""
    return ((x & 0xFFFF) * c + ((((x >> 16) * c) & 0xFFFF) << 16)) & _M32


def _mix(x: Any) -> Any:
    """A 32-bit integer hash (Wellons' `lowbias32`): a bijection with good avalanche, written
    with &, ^, >> and `_mul32` so that Python ints and int64 tensors (any device) agree."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def draws(seed: int, epoch: int, index: torch.Tensor, stream: int) -> torch.Tensor:
    """One uniform 32-bit draw per sample index (int64 in [0, 2³²)), a pure function of
    (seed, epoch, index, stream): the same on any device, in a batch or one at a time."""
    key = _mix(seed & _M32)
    for word in ((seed >> 32) & _M32, epoch & _M32, (epoch >> 32) & _M32, stream & _M32):
        key = _mix(key ^ word)
    index = index.to(torch.int64)
    h = _mix((index & _M32) ^ key)
    return _mix(h ^ ((index >> 32) & _M32) ^ 0x9E3779B9)


def draw(seed: int, epoch: int, index: int, stream: int) -> int:
    """`draws` of one sample index, in Python ints (the per-sample path in a worker)."""
    key = _mix(seed & _M32)
    for word in ((seed >> 32) & _M32, epoch & _M32, (epoch >> 32) & _M32, stream & _M32):
        key = _mix(key ^ word)
    h = _mix((index & _M32) ^ key)
    return int(_mix(h ^ ((index >> 32) & _M32) ^ 0x9E3779B9))


def uniform_int(h: Any, n: Any) -> Any:
    """Integers in [0, n) from 32-bit draws `h` (multiply-shift: ⌊h·n / 2³²⌋)."""
    return (h * n) >> 32


def bernoulli(h: Any, p: float) -> Any:
    """True with probability `p` (to 2⁻³²) from 32-bit draws `h`."""
    return h < round(p * 2**32)


@dataclass(frozen=True, slots=True)
class Transform:
    """A per-sample transform of a batch of examples (B, *shape).

    `train(x, index, epoch, seed)` is the training transform, its draws made from (seed, epoch,
    index); `evaluate(x)` its deterministic counterpart for evaluation; `out_shape` the example
    shape it produces. `stream` tells the transforms of one list apart (set by `make_augment`).
    """

    stream: int = 0

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape

    def train(self, x: torch.Tensor, index: torch.Tensor, epoch: int, seed: int) -> torch.Tensor:
        raise NotImplementedError

    def one(self, x: torch.Tensor, index: int, epoch: int, seed: int) -> torch.Tensor:
        """`train` of one example (C, H, W), with scalar draws and slices: the same numbers as
        its row of a batch, at a few torch calls per sample (the streamed path's workers)."""
        raise NotImplementedError

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _draw(self, seed: int, epoch: int, index: torch.Tensor, j: int) -> torch.Tensor:
        return draws(seed, epoch, index, _SAMPLE_STREAM + 16 * self.stream + j)

    def _draw1(self, seed: int, epoch: int, index: int, j: int) -> int:
        return draw(seed, epoch, index, _SAMPLE_STREAM + 16 * self.stream + j)


@dataclass(frozen=True, slots=True)
class RandomCrop(Transform):
    """Zero-pad by `padding` pixels on every side, then cut a `size`×`size` window at an offset
    drawn uniformly per sample (torchvision's RandomCrop(size, padding)). Evaluation takes the
    centre `size`×`size` window (the image itself when `size` is its size)."""

    size: int = 0
    padding: int = 0

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*shape[:-2], self.size, self.size)

    def train(self, x: torch.Tensor, index: torch.Tensor, epoch: int, seed: int) -> torch.Tensor:
        p, s = self.padding, self.size
        padded = F.pad(x, (p, p, p, p)) if p else x
        b, c, h, w = padded.shape
        oy = uniform_int(self._draw(seed, epoch, index, 0), h - s + 1)
        ox = uniform_int(self._draw(seed, epoch, index, 1), w - s + 1)
        span = torch.arange(s, device=x.device)
        rows = (oy[:, None] + span).view(b, 1, s, 1).expand(b, c, s, w)
        cut = padded.gather(2, rows)
        cols = (ox[:, None] + span).view(b, 1, 1, s).expand(b, c, s, s)
        return cut.gather(3, cols)

    def one(self, x: torch.Tensor, index: int, epoch: int, seed: int) -> torch.Tensor:
        p, s = self.padding, self.size
        padded = F.pad(x, (p, p, p, p)) if p else x
        h, w = padded.shape[-2:]
        oy = uniform_int(self._draw1(seed, epoch, index, 0), h - s + 1)
        ox = uniform_int(self._draw1(seed, epoch, index, 1), w - s + 1)
        return padded[..., oy:oy + s, ox:ox + s].contiguous()

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (h, w) == (self.size, self.size):
            return x
        top, left = (h - self.size) // 2, (w - self.size) // 2
        return x[..., top:top + self.size, left:left + self.size].contiguous()


@dataclass(frozen=True, slots=True)
class HFlip(Transform):
    """Mirror the image left–right with probability `p`, drawn per sample."""

    p: float = 0.5

    def train(self, x: torch.Tensor, index: torch.Tensor, epoch: int, seed: int) -> torch.Tensor:
        flip = bernoulli(self._draw(seed, epoch, index, 0), self.p)
        return torch.where(flip.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)

    def one(self, x: torch.Tensor, index: int, epoch: int, seed: int) -> torch.Tensor:
        return x.flip(-1) if bernoulli(self._draw1(seed, epoch, index, 0), self.p) else x


@dataclass(frozen=True, slots=True)
class Cutout(Transform):
    """Zero a `size`×`size` square whose centre is drawn uniformly over the image, clipped at
    the border (DeVries & Taylor 2017)."""

    size: int = 0

    def train(self, x: torch.Tensor, index: torch.Tensor, epoch: int, seed: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        cy = uniform_int(self._draw(seed, epoch, index, 0), h)
        cx = uniform_int(self._draw(seed, epoch, index, 1), w)
        top, left = cy - self.size // 2, cx - self.size // 2
        ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        in_rows = (ys >= top[:, None]) & (ys < top[:, None] + self.size)  # (B, H)
        in_cols = (xs >= left[:, None]) & (xs < left[:, None] + self.size)  # (B, W)
        hole = in_rows[:, :, None] & in_cols[:, None, :]
        return x.masked_fill(hole[:, None], 0.0)

    def one(self, x: torch.Tensor, index: int, epoch: int, seed: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        cy = uniform_int(self._draw1(seed, epoch, index, 0), h)
        cx = uniform_int(self._draw1(seed, epoch, index, 1), w)
        top, left = cy - self.size // 2, cx - self.size // 2
        out = x.clone()
        out[..., max(top, 0):max(top + self.size, 0), max(left, 0):max(left + self.size, 0)] = 0.0
        return out


@dataclass(frozen=True, slots=True)
class Normalize(Transform):
    """(x − mean) / std per channel (the example's first dimension); one number applies to every
    channel. Deterministic: it applies to training and to every evaluation set alike."""

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        view = (-1, *([1] * (x.ndim - 2)))
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(view)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(view)
        return (x - mean) / std

    def train(self, x: torch.Tensor, index: torch.Tensor, epoch: int, seed: int) -> torch.Tensor:
        return self._apply(x)

    def one(self, x: torch.Tensor, index: int, epoch: int, seed: int) -> torch.Tensor:
        return self._apply(x[None])[0]

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(x)


@dataclass(frozen=True, slots=True)
class Augment:
    """The per-sample transforms of a run, in the spec's order, and the seed they draw from."""

    steps: tuple[Transform, ...]
    seed: int

    @property
    def random(self) -> bool:
        """Whether any transform draws (False: `normalize` alone, applied once at load)."""
        return any(not isinstance(t, Normalize) for t in self.steps)

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        for t in self.steps:
            shape = t.out_shape(shape)
        return shape

    def train(self, x: torch.Tensor, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """A training batch `x` (B, *shape) of the examples `index` (B,) in `epoch`, transformed."""
        for t in self.steps:
            x = t.train(x, index, epoch, self.seed)
        return x

    def sample(self, x: torch.Tensor, index: int, epoch: int) -> torch.Tensor:
        """One training example (no batch dimension), transformed exactly as its row of a
        batch is by `train` (tests/unit/test_augment.py checks the equality)."""
        for t in self.steps:
            x = t.one(x, index, epoch, self.seed)
        return x

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """Examples (B, *shape) as evaluation sees them: the deterministic counterparts."""
        for t in self.steps:
            x = t.evaluate(x)
        return x


def _image(name: str, in_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise AugmentError(f"`{name}` needs image data of shape (C, H, W), but examples have shape "
                           f"{tuple(in_shape)}" + (" (use `shape=image`)" if len(in_shape) == 1 else ""))
    c, h, w = in_shape
    return c, h, w


@AUGMENTS.register("random_crop",
                   Param("size", "int", None, doc="side of the square crop (none: the image's "
                         "height)", lo=1, nullable=True),
                   Param("padding", "int", 0, doc="zero padding added on every side first", lo=0),
                   doc="a random size×size crop of the zero-padded image; evaluation takes the "
                       "centre crop")
def random_crop(seed: int, classes: int, in_shape: tuple[int, ...], size: int | None = None,
                padding: int = 0) -> RandomCrop:
    _, h, w = _image("random_crop", in_shape)
    size = h if size is None else size
    if size > min(h, w):
        raise AugmentError(f"a {size}×{size} crop is larger than the {h}×{w} images (`padding` "
                           f"only gives the crop room to move; evaluation takes the centre crop)")
    return RandomCrop(size=size, padding=padding)


@AUGMENTS.register("hflip", Param("p", "float", 0.5, doc="probability of a flip", lo=0.0, hi=1.0),
                   doc="a random left–right flip")
def hflip(seed: int, classes: int, in_shape: tuple[int, ...], p: float = 0.5) -> HFlip:
    _image("hflip", in_shape)
    return HFlip(p=p)


@AUGMENTS.register("cutout", Param("size", "int", 8, doc="side of the zeroed square", lo=1),
                   doc="zero a random size×size square (DeVries & Taylor 2017)")
def cutout(seed: int, classes: int, in_shape: tuple[int, ...], size: int = 8) -> Cutout:
    _, h, w = _image("cutout", in_shape)
    if size > max(h, w):
        raise AugmentError(f"a {size}×{size} cutout is larger than the {h}×{w} images")
    return Cutout(size=size)


@AUGMENTS.register("normalize",
                   Param("mean", "floats", [0.0], doc="per-channel mean (one number: every channel)"),
                   Param("std", "floats", [1.0], doc="per-channel standard deviation", lo=0.0,
                         lo_open=True),
                   doc="(x − mean) / std per channel, in training and evaluation alike")
def normalize(seed: int, classes: int, in_shape: tuple[int, ...], mean: Sequence[float] = (0.0,),
              std: Sequence[float] = (1.0,)) -> Normalize:
    channels = int(in_shape[0]) if in_shape else 1
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    for key, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            raise AugmentError(f"`normalize` {key} has {len(values)} values, but the examples have "
                               f"{channels} channel(s) (shape {tuple(in_shape)}); give one number "
                               f"or one per channel")
    return Normalize(mean=mean, std=std)


SAMPLE_TRANSFORMS = ("random_crop", "hflip", "cutout", "normalize")
"""The per-sample transforms (the others, `patch`, transform the data set once at load)."""


class AugmentItemError(AugmentError):
    """An `augment` list item does not fit the data; `index` is its position in the list."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


def make_augment(spec: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None, seed: int,
                 classes: int, in_shape: tuple[int, ...]
                 ) -> tuple[Patches | PaperPatches | None, Augment | None]:
    """The transforms a `data` statement's `augment` value describes: the data-set transform
    (the class patch, applied by the loader once) and the per-sample pipeline, each None when
    absent. `in_shape` is the examples' shape as loaded; each per-sample transform is checked
    against the shape the transforms before it leave. A problem with the k-th item of a list
    raises `AugmentItemError` with index k."""
    if not spec:
        return None, None
    items = [spec] if isinstance(spec, Mapping) else list(spec)
    patches: Patches | PaperPatches | None = None
    steps: list[Transform] = []
    shape = tuple(in_shape)
    for k, item in enumerate(items):
        settings = dict(item)
        kind = settings.pop("kind", None)
        entry = AUGMENTS.get(str(kind))
        if entry is None:
            raise AugmentItemError(f"unknown data transform `{kind}`; transforms are "
                                   f"{', '.join(AUGMENTS.names())}", k)
        args = {**entry.defaults(), **settings}
        try:
            built = entry.build(seed, classes, shape, **args)
        except AugmentItemError:
            raise
        except AugmentError as err:
            raise AugmentItemError(err.message, k) from None
        if isinstance(built, Patches | PaperPatches):
            if steps or patches is not None:
                raise AugmentItemError("`patch` transforms the data set once, when it is loaded; "
                                       "give it once, first in the list", k)
            patches = built
        else:
            if (isinstance(built, Normalize) and isinstance(patches, PaperPatches)
                    and any(not isinstance(t, Normalize) for t in steps)):
                raise AugmentItemError("with the paper's patch, `normalize` applies to the images "
                                       "before the patch is pasted (as the paper does); put it "
                                       "right after `patch`, before the random transforms", k)
            steps.append(dataclasses.replace(built, stream=k))
            shape = built.out_shape(shape)
    return patches, (Augment(tuple(steps), seed) if steps else None)


@dataclass(frozen=True, slots=True)
class RedrawPatch(Transform):
    """The paper's patch on the training split, redrawn every epoch as the authors' loader does
    (cwein3/large-lr-code `FixedAugmentDataset` + `PatchAugmentFixed`): which examples carry a
    patch is fixed (`patched`, drawn at load: exact counts, as `PaperPatches.kinds`); at every
    epoch each patched example is patch-only with probability `share` = only / (1 − free) (its
    image zeroed, z + s·only_scale·u·v_y) and otherwise image and z + s·v_y, with s = ±1 and
    u ~ U(0, 1) drawn from (seed, epoch, index). `labels` are the training split's (looked up by
    the sample index, so every path — in-memory batches, streamed samples, brains — agrees).
    Evaluation leaves examples as they are (the evaluation splits are patched once, at load)."""

    patches: PaperPatches | None = None
    labels: torch.Tensor | None = None
    patched: torch.Tensor | None = None
    share: float = 0.0

    def _parts(self, device: torch.device) -> tuple[PaperPatches, torch.Tensor, torch.Tensor]:
        assert self.patches is not None and self.labels is not None and self.patched is not None
        return self.patches, self.labels.to(device), self.patched.to(device)

    def train(self, x: torch.Tensor, index: torch.Tensor, epoch: int, seed: int) -> torch.Tensor:
        p, labels, patched = self._parts(x.device)
        index = index.to(x.device)
        on = patched[index]
        only = on & bernoulli(self._draw(seed, epoch, index, 0), self.share)
        signs = torch.where(bernoulli(self._draw(seed, epoch, index, 1), 0.5), 1.0, -1.0).to(x.dtype)
        u = self._draw(seed, epoch, index, 2).to(x.dtype) / float(2**32)
        factor = torch.where(only, p.only_scale * u, torch.ones_like(u))
        out = torch.where(only.view(-1, *([1] * (x.ndim - 1))), torch.zeros_like(x), x)
        rows, cols = p.window(x.shape)
        coef = (signs * factor).view(-1, 1, 1, 1)
        values = p.z.to(x.device, x.dtype) + coef * p.v.to(x.device, x.dtype)[labels[index]]
        window = out[:, :, rows, cols]
        out[:, :, rows, cols] = torch.where(on.view(-1, 1, 1, 1), values, window)
        return out

    def one(self, x: torch.Tensor, index: int, epoch: int, seed: int) -> torch.Tensor:
        return self.train(x[None], torch.tensor([index]), epoch, seed)[0]


def redraw_patch(patches: PaperPatches, labels: torch.Tensor, stream: int) -> RedrawPatch:
    """The per-epoch patch of a training split with `labels` (see `RedrawPatch`)."""
    kinds = patches.kinds(len(labels), stream)
    patched = 1.0 - patches.free
    share = 1.0 if patched <= 0 else min(1.0, patches.only / patched)
    return RedrawPatch(stream=0, patches=patches, labels=labels.detach().cpu().clone(),
                       patched=(kinds != KIND_FREE), share=share)


def leading_normalize(augment: Augment | None) -> tuple[tuple[Normalize, ...], Augment | None]:
    """The `normalize` steps that open the per-sample pipeline, and the pipeline without them
    (None when nothing is left). With the paper's patch the loader applies these to the images
    before pasting the patch, so the patch stays in normalised units (cwein3/large-lr-code
    normalises, then patches); `make_augment` refuses a `normalize` after a random transform."""
    if augment is None:
        return (), None
    k = 0
    while k < len(augment.steps) and isinstance(augment.steps[k], Normalize):
        k += 1
    lead = tuple(t for t in augment.steps[:k] if isinstance(t, Normalize))
    rest = augment.steps[k:]
    return lead, (Augment(rest, augment.seed) if rest else None)
