"""Hyper-parameter search: `mrc sweep SPEC` runs the spec's `sweep` statement as an optuna study.

- `study`: the study — storage (a journal file by default), samplers, pruners, the count of
  trials towards `--trials`, the lock that makes "count, then start a trial" atomic, and the
  clean-up that marks the trials of dead workers failed and queues them again.
- `worker`: one worker process; it runs trials (each an ordinary run directory) until the study
  has its trials.
- `results`: the live table, `best.mrs`, `trials.csv` and the plots.
- `driver`: the `mrc sweep` command — checks the input, starts the workers, shows the table,
  handles Ctrl-C and writes the results.
"""

from __future__ import annotations

from mrc.sweep.study import SweepError

__all__ = ["SweepError"]
