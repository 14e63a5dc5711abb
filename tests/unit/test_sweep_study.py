"""The pieces of `mrc sweep` that need no training: best.mrs, the trial count, per-trial
seeding, reclaiming a dead worker's trial, liveness, and a study whose space changed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from mrc import spectext
from mrc.api import check_spec
from mrc.sweep import results, study
from mrc.sweep.study import SweepError

SPEC = """model mlp(hidden=[16])
data digits(batch=32, val=0.2)
optimizer sgd(lr=0.05, momentum=0.9)
train(epochs=1, seed=0)

sweep random(trials=4, seed=3) {
  optimizer.lr = loguniform(1e-3, 0.3)
  data.batch = [16, 64]
  optimizer.weight_decay = uniform(0, 0.01)
}
"""


def sweep_of(tmp_path: Path, text: str = SPEC):
    spec = tmp_path / "s.mrs"
    spec.write_text(text)
    program = check_spec(spec)
    assert program.sweep is not None
    return spec, program.sweep


def test_best_spec_writes_each_value_at_its_site_and_drops_the_sweep(tmp_path: Path) -> None:
    spec, sweep = sweep_of(tmp_path, SPEC)
    trial = create_trial(params={"optimizer.lr": 0.0123, "data.batch": "64", "optimizer.weight_decay": 0.004},
                         distributions={"optimizer.lr": FloatDistribution(1e-3, 0.3, log=True),
                                        "data.batch": CategoricalDistribution(["16", "64"]),
                                        "optimizer.weight_decay": FloatDistribution(0, 0.01)},
                         value=0.9)
    text, unplaced = results.best_spec_text(spec, sweep, trial, "s")
    assert unplaced == []
    assert "sweep" not in text.split("\n", 2)[2]  # only the header names it
    assert "optimizer sgd(lr=0.0123, momentum=0.9, weight_decay=0.004)" in text
    assert "data digits(batch=64, val=0.2)" in text
    best = tmp_path / "best.mrs"
    best.write_text(text)
    program = check_spec(best)
    assert program.sweep is None
    assert program.optimizer.kwargs["lr"] == 0.0123 and program.optimizer.kwargs["weight_decay"] == 0.004
    assert program.data.kwargs["batch"] == 64


def test_relative_file_names_are_made_absolute_for_best_mrs(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text("")
    assert spectext._absolute("net.py:make", tmp_path) == f"{(tmp_path / 'net.py').resolve()}:make"
    assert spectext._absolute("digits", tmp_path) is None
    assert spectext._absolute("/abs/file.npz", tmp_path) is None


def test_interrupted_trials_do_not_count_and_everything_else_does() -> None:
    def made(state: TrialState, **attrs: object) -> optuna.trial.FrozenTrial:
        t = create_trial(state=state, value=1.0 if state == TrialState.COMPLETE else None, user_attrs=dict(attrs))
        return t

    assert study.counts_towards(made(TrialState.COMPLETE))
    assert study.counts_towards(made(TrialState.PRUNED))
    assert study.counts_towards(made(TrialState.FAIL, reason="the loss became nan"))
    assert not study.counts_towards(made(TrialState.FAIL, interrupted=True))
    assert study.counts_towards(made(TrialState.WAITING))


def test_random_points_depend_on_the_seed_and_the_trial_number_only(tmp_path: Path) -> None:
    _, sweep = sweep_of(tmp_path)

    def draws() -> list[float]:
        s = optuna.create_study(sampler=study.make_sampler(sweep), direction="maximize")
        out = []
        for _ in range(4):
            t = s.ask()
            out.append(float(study.suggest(t, sweep.spaces[0])))
            s.tell(t, 0.5)
        return out

    first, second = draws(), draws()
    assert first == second  # two independent processes: trial k draws the same point …
    assert len(set(first)) == 4  # … and trials with different numbers draw different ones
    assert study.trial_seed(3, 0) != study.trial_seed(3, 1) != study.trial_seed(4, 1)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_dead_workers_trial_is_marked_interrupted_and_queued_again(tmp_path: Path) -> None:
    _, sweep = sweep_of(tmp_path)
    s = optuna.create_study(sampler=study.make_sampler(sweep), direction="maximize")
    s.set_user_attr("mrc_space", study.space_description(sweep))
    dead, mine, elsewhere = s.ask(), s.ask(), s.ask()
    for t in (dead, mine, elsewhere):
        for space in sweep.spaces:
            study.suggest(t, space)
    dead.set_user_attr("host", socket.gethostname())
    dead.set_user_attr("pid", _dead_pid())
    for key, value in study.owner().items():
        mine.set_user_attr(key, value)
    elsewhere.set_user_attr("host", "another-machine")
    elsewhere.set_user_attr("pid", 1)
    assert study.reclaim_stale(s, shared_lock=True) == [dead.number]
    trials = s.get_trials()
    assert trials[dead.number].state == TrialState.FAIL and trials[dead.number].user_attrs["interrupted"]
    assert trials[mine.number].state == trials[elsewhere.number].state == TrialState.RUNNING
    queued = s.get_trials(states=(TrialState.WAITING,))
    assert len(queued) == 1 and queued[0].user_attrs["retry_of"] == dead.number
    retry = s.ask()  # the queue comes first, with the same values
    assert retry.number == queued[0].number
    assert {sp.key: study.suggest(retry, sp) for sp in sweep.spaces} == {
        k: study.override_text(next(sp for sp in sweep.spaces if sp.key == k), v)
        for k, v in trials[dead.number].params.items()}
    assert study.count_trials(s) == 3  # the dead one out, its retry in


def test_liveness_checks_the_start_time_so_a_reused_pid_is_not_the_owner() -> None:
    me = os.getpid()
    assert study.alive(me, study._proc_start(me))
    if study._proc_start(me) is not None:
        assert not study.alive(me, "1")
    assert not study.alive(_dead_pid(), None)


def test_a_study_whose_space_changed_is_refused(tmp_path: Path) -> None:
    _, sweep = sweep_of(tmp_path)
    journal = str(tmp_path / "study.log")
    study.open_study(sweep, journal, "s", create=True)
    _, other = sweep_of(tmp_path, SPEC.replace("loguniform(1e-3, 0.3)", "loguniform(1e-4, 0.3)"))
    with pytest.raises(SweepError, match="another space"):
        study.open_study(other, journal, "s", create=True)
    study.open_study(sweep, journal, "s", create=True)  # the same space: continues


def test_every_grid_worker_maps_a_trial_number_to_the_same_point(tmp_path: Path) -> None:
    _, sweep = sweep_of(tmp_path, SPEC.replace("random(trials=4, seed=3)", "grid()")
                        .replace("loguniform(1e-3, 0.3)", "[0.01, 0.1]").replace("uniform(0, 0.01)", "[0, 0.001]"))
    a, b = study.make_sampler(sweep), study.make_sampler(sweep)
    assert a._all_grids == b._all_grids and len(a._all_grids) == study.grid_size(sweep) == 8


def test_a_value_written_over_two_lines_is_a_diagnostic_not_a_crash() -> None:
    from mrc.check.checker import check
    from mrc.diagnostics import CompileError
    from mrc.parser import parse

    text = SPEC.replace("[16, 64]", "[16,\n 64 +\n 0]")
    with pytest.raises(CompileError) as err:
        check(parse(text, "two-lines.mrs"), Path("."))
    assert any("one line" in d.message for d in err.value.diagnostics)


def test_choices_are_read_from_the_text_that_was_parsed_not_the_disk() -> None:
    from mrc.check.checker import check
    from mrc.parser import parse

    program = check(parse(SPEC, "not-on-disk.mrs"), Path("."))
    assert program.sweep is not None and program.sweep.spaces[1].choices == ("16", "64")


def test_tables_show_values_at_4_significant_digits_and_the_spec_keeps_them_exact() -> None:
    assert [results.shown(v) for v in ("0.0012345678912", "128", "relu", "1e-05", "3.0", "-7")] == \
        ["0.001235", "128", "relu", "1e-05", "3", "-7"]
