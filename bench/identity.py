"""Bit-identity across compiler changes: every spec in specs/, trained briefly on the CPU,
must end with exactly the same parameters before and after a refactoring.

    python bench/identity.py --save before.json      # on the commit before the change
    python bench/identity.py --check before.json     # on the commit after it

Each spec trains for `--steps` steps (default 64: several periods of every spec) with the spec's
own seed, on the CPU, without checkpoints in between. The digest of a run is the SHA-256 of
every tensor of its final state_dict (and of each brain's, for brains specs), in key order.
The specs run from a copy in a temporary folder: each `*pretrain` spec runs first, and the
fine-tuning specs read its `../runs/NAME/latest/final.pt` there. A spec this machine cannot
compile (its data set is absent) is skipped and said.
Last line: {"specs": N, "identical": N_same, "different": [names]}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def run_all(steps: int) -> dict[str, str]:
    from mrc.api import train
    from mrc.diagnostics import CompileError

    torch.set_num_threads(1)
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # the specs run from a copy, so that a fine-tuning spec's `../runs/NAME/latest/final.pt`
        # reads the pretraining run made here, never one in the repository's runs/
        specs_dir = Path(tmp) / "specs"
        shutil.copytree(ROOT / "specs", specs_dir)
        runs = Path(tmp) / "runs"
        specs = sorted(specs_dir.glob("*.mrs"), key=lambda p: (not p.stem.endswith("pretrain"), p.stem))
        for spec in specs:
            run_dir = runs / spec.stem / "identity"
            try:
                result = train(spec, out=run_dir, steps=steps, device="cpu")
            except CompileError as err:  # e.g. a data set this machine lacks (CIFAR-10)
                print(f"{spec.stem:<20} skipped: {str(err).splitlines()[0]}", file=sys.stderr)
                continue
            (runs / spec.stem / "latest").symlink_to("identity")
            states = {"model": result.model.state_dict()}
            for brain in sorted((run_dir / "brains").glob("*.pt")) if (run_dir / "brains").is_dir() else []:
                states[f"brain:{brain.stem}"] = torch.load(brain, weights_only=True)
            out[spec.stem] = digest({f"{k}/{n}": v for k, s in states.items() for n, v in s.items()})
            print(f"{spec.stem:<20} {out[spec.stem][:16]}", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=64)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--save", type=Path, metavar="FILE")
    mode.add_argument("--check", type=Path, metavar="FILE")
    args = ap.parse_args()
    digests = run_all(args.steps)
    if args.save:
        args.save.write_text(json.dumps({"steps": args.steps, "digests": digests}, indent=2) + "\n")
        print(json.dumps({"specs": len(digests), "saved": str(args.save)}))
        return
    ref = json.loads(args.check.read_text())
    if ref["steps"] != args.steps:
        sys.exit(f"identity: {args.check} was saved with --steps {ref['steps']}")
    different = sorted(k for k in ref["digests"] if digests.get(k) != ref["digests"][k])
    new = sorted(set(digests) - set(ref["digests"]))
    if new:
        print(f"not in {args.check} (not compared): {', '.join(new)}", file=sys.stderr)
    for k in different:
        print(f"DIFFERENT: {k}", file=sys.stderr)
    print(json.dumps({"specs": len(ref["digests"]), "identical": len(ref["digests"]) - len(different),
                      "different": different}))
    sys.exit(1 if different else 0)


if __name__ == "__main__":
    main()
