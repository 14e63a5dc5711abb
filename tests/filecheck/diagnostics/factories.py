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
