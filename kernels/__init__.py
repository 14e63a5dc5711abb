"""mrc.kernels: fused, memory-bound update kernels over flat parameter buffers.

One module per kernel family, each with a plain-torch reference (`<name>_torch`, also the CPU
path) and a Triton kernel (`<name>_triton`) of the same function:

* `flat`      FlatGroup: parameters re-pointed into one buffer, flat gradients and state;
* `sgd`       torch.optim.SGD, and the fused multirate (fast/slow, linear drift) update;
* `adam`      Adam and AdamW, and the multirate update (segments at their own step counts);
* `subset`    random-subset zero/restore and its seeded mask;
* `langevin`  the underdamped Langevin O-step (counter-based noise) and a BAOAB step;
* `mgrit`     the MGRIT dense step and FAS correction;
* `configs`   the Triton import guard and every autotune config.

Importing this package does not import Triton. Which path a run takes is not decided here: the
select-kernels pass writes it on each op, from the run's Target (mrc/target.py: its device and
whether Triton runs there) and the spec's `train(kernels=…)`.
"""
