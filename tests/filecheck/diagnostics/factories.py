"""User factories for the diagnostics tests."""


def broken(width, in_shape, classes):
    raise ValueError(f"width {width} is too small for {classes} classes")


def branchy(in_shape, classes):
    import torch

    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(in_shape[0], classes)

        def forward(self, x):
            if x.sum() > 0:
                return self.fc(x)
            return -self.fc(x)

    return Branchy()


def flat_digits():
    """An evaluation set of flat (64,) vectors, for a model trained on 1×8×8 images."""
    import numpy as np

    return {"x": np.zeros((4, 64), dtype="float32"), "y": np.zeros(4, dtype="int64")}


def many_classes():
    """An evaluation set with a label (12) beyond the digits' ten classes."""
    import numpy as np

    return {"x": np.zeros((3, 1, 8, 8), dtype="float32"), "y": np.array([0, 1, 12])}


def shape_bug(in_shape, classes):
    """A model whose head expects 32 features where its body gives 16."""
    import torch

    class ShapeBug(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(in_shape[0], 16)
            self.head = torch.nn.Linear(32, classes)

        def forward(self, x):
            return self.head(torch.relu(self.body(x)))

    return ShapeBug()


def per_example_loss(output, target):
    """A loss that forgets to reduce: one value per example, not the batch's mean."""
    return ((output - target) ** 2).mean(1)


def grid_targets():
    """Regression targets of shape (2, 2) per example, for a model that outputs a flat vector."""
    import numpy as np

    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((40, 3)).astype("float32"),
            "y": rng.standard_normal((40, 2, 2)).astype("float32")}


def float_labels():
    """Float targets (a regression problem) for a spec that names no loss (cross-entropy)."""
    import numpy as np

    return {"x": np.zeros((6, 3), dtype="float32"), "y": np.linspace(0, 1, 6).astype("float32")}
