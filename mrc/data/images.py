"""`image_folder(root, size)`: a folder of images, one subfolder per class, decoded with Pillow.

Layout (torchvision's ImageFolder): `root/CLASS/**/IMAGE`; the class names, sorted, are the
labels 0, 1, 2, …. The held-out split is, in this order of preference:

1. `root/train/` beside `root/val/` (or `root/test/`): each of them one subfolder per class;
2. `root` itself named `train` with a sibling `val/` (or `test/`) folder;
3. otherwise a seeded random fraction `val` of `root`'s images (the loader's usual split).

The validation folder's classes must be among the training folder's (it takes their labels).
Each image is converted to RGB (or grayscale with `mode = gray`), its shorter side resized to
`size` and the centre cut to `size`×`size` (or `size = [height, width]`), and becomes a float32
(C, H, W) tensor in [0, 1], as torchvision's Resize + CenterCrop + ToTensor make it. The set
streams: images are decoded per sample, in the DataLoader's workers (`workers = N`);
`stream = false` decodes them all once and keeps them in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mrc.data.files import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                  ".pgm")
"""The file types an image folder reads (any other file is skipped)."""

VAL_FOLDERS = ("val", "test")
"""Names of a held-out folder beside the training one, in order of preference."""


class ImageFolderSet(Dataset):
    """The images of an image folder: (path, label) pairs, decoded on access."""

    def __init__(self, files: list[tuple[str, int]], classes: list[str], size: tuple[int, int],
                 mode: str) -> None:
        self.files, self.classes, self.size, self.mode = files, classes, size, mode
        self.targets = [label for _, label in files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.files[i]
        return decode(path, self.size, self.mode), label


def decode(path: str, size: tuple[int, int], mode: str) -> torch.Tensor:
    """One image as float32 (C, H, W) in [0, 1]: converted, shorter side resized, centre cut."""
    from PIL import Image

    height, width = size
    with Image.open(path) as img:
        img = img.convert("L" if mode == "gray" else "RGB")
        w, h = img.size
        scale = max(height / h, width / w)
        new = (max(width, round(w * scale)), max(height, round(h * scale)))
        if new != (w, h):
            img = img.resize(new, Image.Resampling.BILINEAR)
        left, top = (new[0] - width) // 2, (new[1] - height) // 2
        img = img.crop((left, top, left + width, top + height))
        array = np.asarray(img, dtype=np.float32) / 255.0
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def _classes(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path, classes: list[str], labels: dict[str, int]) -> list[tuple[str, int]]:
    out = []
    for name in classes:
        for path in sorted((folder / name).rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                out.append((str(path), labels[name]))
    return out


def _split_folders(root: Path) -> tuple[Path, Path | None]:
    """The training folder and the held-out one, if the layout has one (module docstring)."""
    if (root / "train").is_dir():
        for name in VAL_FOLDERS:
            if (root / name).is_dir():
                return root / "train", root / name
    if root.name == "train":
        for name in VAL_FOLDERS:
            if (root.parent / name).is_dir():
                return root, root.parent / name
    return root, None


def image_folder(seed: int, root: str, size: Any, mode: str = "rgb") -> dict[str, Any]:
    """The folder's training and validation Datasets (the loader streams them)."""
    sides = [int(s) for s in (size if isinstance(size, list | tuple) else [size])]
    if len(sides) not in (1, 2):
        raise DataError(f"image_folder: `size` is one side or [height, width], not {size!r}")
    shape = (sides[0], sides[-1])
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"image_folder: folder {root} not found (looked in {base.resolve()}); give "
                        f"the folder that holds one subfolder of images per class")
    train_dir, val_dir = _split_folders(base)
    classes = _classes(train_dir)
    if not classes:
        raise DataError(f"image_folder: {train_dir} has no class subfolders; put each class's "
                        f"images in a folder named after it (root/CLASS/image.png)")
    labels = {name: k for k, name in enumerate(classes)}
    files = _files(train_dir, classes, labels)
    if not files:
        raise DataError(f"image_folder: no images ({', '.join(IMAGE_SUFFIXES)}) in the class "
                        f"folders of {train_dir}")
    out: dict[str, Any] = {"train_set": ImageFolderSet(files, classes, shape, mode), "val_set": None,
                           "classes": len(classes)}
    if val_dir is not None:
        extra = [c for c in _classes(val_dir) if c not in labels]
        if extra:
            raise DataError(f"image_folder: the held-out folder {val_dir} has class `{extra[0]}`, "
                            f"which {train_dir} does not have")
        held = _files(val_dir, [c for c in classes if (val_dir / c).is_dir()], labels)
        out["val_set"] = ImageFolderSet(held, classes, shape, mode)
    return out
