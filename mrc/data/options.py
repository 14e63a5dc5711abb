"""The options every data set takes (`batch`, `val`, `keep`, `augment`, `stream`, …).

A table of typed parameters, read by the checker and applied by the loader (`mrc.data.loader`);
it lives apart from the loader so that reading it imports no torch.
"""

from __future__ import annotations

from mrc.registry import Param

DATA_OPTIONS: tuple[Param, ...] = (
    Param("batch", "int", 64, doc="examples per training batch", lo=1),
    Param("val", "float", 0.2,
          doc="fraction of the examples held out for validation; ignored when the data set has "
              "a predefined test split, which is then the validation set",
          lo=0.0, hi=1.0, hi_open=True),
    Param("keep", "ints", None,
          doc="class labels to keep, relabelled 0..k-1 in the order given (for transfer "
              "experiments); none keeps all", lo=0, nullable=True),
    Param("shuffle", "bool", True, doc="reshuffle the training examples every epoch"),
    Param("normalize", "bool", False,
          doc="standardise inputs with the training split's per-feature mean and std"),
    Param("drop_last", "bool", False, doc="drop the last batch of an epoch if it is short"),
    Param("limit", "int", 0, doc="keep at most this many training examples (0 keeps all)",
          lo=0),
    Param("val_limit", "int", 0,
          doc="evaluate on at most this many held-out examples, a random subset that is the same "
              "for every seed (0 keeps all)", lo=0),
    Param("augment", "any", None,
          doc="data transforms, one or a list: `random_crop(size, padding)`, `hflip(p)`, "
              "`cutout(size)`, `normalize(mean, std)` run per sample on the training batches "
              "(evaluation sees only `normalize` and a centre crop), `patch(…)` transforms the "
              "data set once; none leaves the data as they are",
          nullable=True),
    Param("stream", "bool", None,
          doc="read the training data through a torch DataLoader; none (auto): Datasets (image "
              "folders, user Datasets) stream and arrays stay on the device", nullable=True),
    Param("workers", "int", 0, doc="DataLoader worker processes of streamed data (0: in the "
          "main process)", lo=0),
    Param("pin_memory", "bool", None, doc="pin streamed batches for fast copies to the GPU; none "
          "(auto): on CUDA", nullable=True),
    Param("persistent_workers", "bool", False,
          doc="keep the DataLoader's workers alive between epochs (with workers > 0)"),
    Param("prefetch", "int", None, doc="batches each worker loads ahead (none: torch's 2)", lo=1,
          nullable=True),
)
"""Options every data set takes, handled by the loader rather than by the builders."""
