"""The run folder's rules: what a new run needs, what a resumed one may change, --restart.

    from localpeer.train.rundir import prepare_run, resume_point, restart_run
    resume = resume_point(recipe, args.resume)   # --resume before a first checkpoint: step 0
    run = prepare_run(recipe, resume)            # checked; recipe.yaml written
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from localpeer.config import Recipe, recipe_dict
from localpeer.errors import InputError
from localpeer.formats import atomic_write_text
from localpeer.train.checkpoint import latest_checkpoint

log = logging.getLogger(__name__)

# the recipe keys a resumed run may change; any other change would make the checkpoint's
# adapter, optimizer or data order mean something else (localpeer defines this list)
RESUMABLE_KEYS = ("train.steps", "train.eval_every", "train.checkpoint_every")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume_recipe(recipe: Recipe, run: Path) -> None:
    """Refuse, before anything is written, a resume whose recipe differs from the run's own
    recipe.yaml in a key outside RESUMABLE_KEYS (exit 2 naming every such key)."""
    from localpeer.config import load_recipe

    saved = run / "recipe.yaml"
    if not saved.is_file():
        return
    try:  # through load_recipe: keys added since the run was made take their defaults
        old = _flat(recipe_dict(load_recipe(saved)))
    except InputError as e:
        log.warning("cannot compare with the run's recipe.yaml (%s); resuming unchecked", e)
        return
    new = _flat(recipe_dict(recipe))
    changed = [k for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k) and k not in RESUMABLE_KEYS]
    if changed:
        what = "; ".join(f"{k}: {old.get(k)!r} in the run, {new.get(k)!r} now" for k in changed)
        raise InputError(f"--resume with a different recipe ({what}). Only "
                         f"{', '.join(RESUMABLE_KEYS)} may change when resuming: drop those "
                         "overrides, or start over with --restart, or set out_dir=runs/<new "
                         "name>", saved)


def prepare_run(recipe: Recipe, resume: bool) -> Path:
    """The run folder, checked: a new run needs an empty folder; a resumed one a compatible
    recipe (checked before anything is written). `resume` here means there is a checkpoint
    to resume from (see `resume_point`)."""
    run = Path(recipe.out_dir)
    has_run = (run / "metrics.jsonl").exists() or latest_checkpoint(run / "checkpoints")
    if has_run and not resume:
        raise InputError("this run folder already has a run; pass --resume to continue it "
                         "(from its last checkpoint, or from step 0 when it stopped before the "
                         "first), --restart to move it aside and start over, or set "
                         "out_dir=runs/<new name>", run)
    if resume:
        check_resume_recipe(recipe, run)
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run / "recipe.yaml", _yaml(recipe_dict(recipe)))
    return run


def resume_point(recipe: Recipe, resume: bool) -> bool:
    """--resume on a run that stopped before its first checkpoint starts it from step 0 (its
    partial metrics.jsonl is replaced), after the same recipe check; says so."""
    run = Path(recipe.out_dir)
    if not resume or latest_checkpoint(run / "checkpoints"):
        return resume
    check_resume_recipe(recipe, run)
    log.warning("%s: no checkpoint yet (the run stopped before its first); starting it from "
                "step 0", run)
    if (run / "metrics.jsonl").exists():
        (run / "metrics.jsonl").unlink()
    return False


def restart_run(recipe: Recipe) -> Path | None:
    """--restart: move an existing run folder aside (runs/NAME -> runs/NAME.old-<time>) so a
    new run starts in its place; returns where it went (None when there was nothing)."""
    run = Path(recipe.out_dir)
    if not run.exists() or not any(run.iterdir()):
        return None
    aside = run.with_name(f"{run.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(run, aside)
    return aside


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)
