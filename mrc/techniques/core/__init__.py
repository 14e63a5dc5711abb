"""Plain training: the model, the data, the base optimizer and its learning-rate schedule, the
train settings, initial weights and early stopping — what every spec has, whatever other
technique it uses."""
