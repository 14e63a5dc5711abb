"""TensorBoard event files for a run: every metrics record mirrored as scalars under `DIR/tb/`.

The callback does not compute anything: it observes the records the trainer writes to
`metrics.jsonl` (`Run.record` tells it of each, see `Run.listeners`) and turns each into
scalars, so the two views of a run never disagree. Tags (documented in the README, "Seeing a
run"):

    train/loss                       the step's training loss (MetricsLog records)
    lr/PARTITION                     each partition's learning rate as it ran
    val/loss, val/acc                the validation split (Evaluation records; no val/acc for a
                                     regression loss)
    val/exact, val/NAME              a multi-label loss's exact match; each user `metric NAME`
    eval/NAME/loss, eval/NAME/acc    each `eval NAME = …` set
    KEY/…                            a technique's entry KEY of a record, as the technique's
                                     scalars hook names its tags (mrc.lower.plan.Hooks): e.g.
                                     each brain's loss and validation metrics, each module's
                                     loss, transport and τ/λ, each MGRIT stack's residuals
    spec, graph                      text summaries at step 0: the spec as it ran (config.mrs,
                                     `--set` values written in) and its compiled graph
    hparams                          the run's `--set` overrides (from run.json) with val/loss and
                                     val/acc, for TensorBoard's HParams tab

Characters TensorBoard does not allow in a tag (anything but letters, digits, `_`, `-`, `.`,
`/`) become `_` (a partition `all@m0` is `lr/all_m0`).

Resume: the writer is opened with `purge_step = step + 1`, the first step the resumed run logs.
TensorBoard then discards whatever the interrupted run logged after its checkpoint, so every
step appears once, exactly as `metrics.jsonl` keeps only the lines up to the checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrc.runtime.callbacks import Callback, Run

if TYPE_CHECKING:
    from mrc.lower.plan import Scalars

TB = "tb"
"""The run directory's subdirectory that holds the event files."""

GRAPH_TEXT_LIMIT = 200_000
"""A compiled graph's full text longer than this is summarised by its compact form instead."""

_BAD = re.compile(r"[^-/\w.]")


def tag(*parts: str) -> str:
    """A TensorBoard tag from its parts, with disallowed characters replaced by `_`."""
    return _BAD.sub("_", "/".join(parts))


def scalars(rec: dict[str, Any], techniques: Mapping[str, Scalars] | None = None) -> dict[str, float]:
    """The scalars (tag → value) of one metrics record, a MetricsLog or an Evaluation record;
    `techniques` maps a technique's record key to its tags (the Plan's scalars hooks).

    A pure function of the record so the mapping can be tested, and documented, on its own.
    Missing and non-numeric values (a diverged run's None) are left out."""
    out: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return
        out[name] = float(value)

    if "loss" in rec or "lr" in rec:  # a training record
        put("train/loss", rec.get("loss"))
        for part, lr in (rec.get("lr") or {}).items():
            put(tag("lr", part), lr)
    if "val_loss" in rec or "val_acc" in rec:  # an evaluation record
        put("val/loss", rec.get("val_loss"))
        put("val/acc", rec.get("val_acc"))
        for key, value in rec.items():  # a multi-label run's exact match, the user's metrics
            if key.startswith("val_") and key not in ("val_loss", "val_acc"):
                put(tag("val", key[4:]), value)
        for name, ev in (rec.get("evals") or {}).items():
            for key, value in ev.items():
                put(tag("eval", name, key), value)
    for key, mapping in (techniques or {}).items():
        if rec.get(key):
            for name, value in mapping(rec[key], rec).items():
                put(tag(name), value)
    return out


class TensorBoard(Callback):
    """Writes the run's metrics records, the spec and the compiled graph as TensorBoard events.

    `spec_text` and `graph_text` are written once, at the start of a fresh run (a resumed run
    already has them). `resumed` opens the writer so the steps after the checkpoint that the
    interrupted run had logged are discarded (see the module's docstring)."""

    def __init__(self, out_dir: Path, *, resumed: bool, spec_text: str = "", graph_text: str = "",
                 hparams: dict[str, Any] | None = None, techniques: Mapping[str, Scalars] | None = None) -> None:
        self.dir = out_dir / TB
        self.resumed = resumed
        self.spec_text = spec_text
        self.graph_text = graph_text
        self.hparams = hparams or {}
        self.techniques = techniques
        self.writer: Any = None

    def on_start(self, run: Run) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if not self.resumed and self.dir.is_dir():  # a fresh run in an old directory starts over
            for old in self.dir.glob("events.out.tfevents.*"):
                old.unlink()
        self.writer = SummaryWriter(str(self.dir), purge_step=run.step + 1 if self.resumed else None)
        if not self.resumed:
            if self.spec_text:
                self.writer.add_text("spec", _code(self.spec_text), 0)
            if self.graph_text:
                self.writer.add_text("graph", _code(self.graph_text), 0)
            if self.hparams:  # in this run's own event file (add_hparams would make another run)
                from torch.utils.tensorboard.summary import hparams

                for summary in hparams(self.hparams, {"val/loss": 0.0, "val/acc": 0.0}):
                    self.writer.file_writer.add_summary(summary)
        run.listeners.append(self.write)

    def write(self, rec: dict[str, Any]) -> None:
        """Mirror one metrics record (called by `Run.record` as the record is written)."""
        if self.writer is None:
            return
        step = int(rec["step"])
        for name, value in scalars(rec, self.techniques).items():
            self.writer.add_scalar(name, value, step)

    def flush(self) -> None:
        """Put what was written on disk (at each checkpoint, so a resume finds it there)."""
        if self.writer is not None:
            self.writer.flush()

    def on_end(self, run: Run) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.write in run.listeners:
            run.listeners.remove(self.write)


def _code(text: str) -> str:
    """`text` as a Markdown code block (TensorBoard renders text summaries as Markdown)."""
    return "\n".join("    " + line for line in text.splitlines())


def graph_text(graph: Any) -> str:
    """The compiled graph as the `graph` text summary shows it: in full, or compact when long."""
    text = graph.to_text()
    return text if len(text) <= GRAPH_TEXT_LIMIT else graph.to_text(compact=True)


def hparams_of(run_dir: Path) -> dict[str, Any]:
    """The run's `--set` overrides as hyper-parameters (numbers as numbers, anything else as
    its text), read from run.json; {} without one."""
    import json

    try:
        record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    out: dict[str, Any] = {}
    for item in record.get("overrides") or []:
        key, _, value = str(item).partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            out[key.strip()] = value.strip().strip('"')
    return out
