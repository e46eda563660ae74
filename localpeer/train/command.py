"""`localpeer train RECIPE.yaml [key=value ...] [--resume] [--dry-run]`.

    localpeer train recipes/smollm2-135m-cpu.yaml train.steps=20
"""

from __future__ import annotations

import logging
from pathlib import Path

from localpeer.deps import need, require
from localpeer.errors import InputError

log = logging.getLogger(__name__)

TRAIN_MODULES = ("torch", "transformers", "peft", "accelerate", "safetensors")


def model_card(recipe, models_dir: Path = Path("models")):
    from localpeer.config import load_card

    card_path = models_dir / f"{recipe.model}.yaml"
    return load_card(card_path) if card_path.is_file() else None


def model_source(recipe, models_dir: Path = Path("models")):
    """(model folder, LoRA targets from the model card or ())."""
    card = model_card(recipe, models_dir)
    card_path = models_dir / f"{recipe.model}.yaml"
    targets = card.lora_targets if card else ()
    path = Path(recipe.model)
    if path.is_dir():
        return path, targets
    pulled = models_dir / "hf" / recipe.model
    if pulled.is_dir():
        return pulled, targets
    from localpeer.pull import materialize

    embedded = materialize(recipe.model, models_dir)  # the embedded default needs no pull
    if embedded is not None:
        return embedded, targets
    if card_path.is_file():
        raise InputError(f"model {recipe.model!r} is not pulled yet; run `localpeer pull "
                         f"{recipe.model}` (once, with the hub reachable, or offline for the "
                         "embedded default)")
    raise InputError(f"model {recipe.model!r} is neither a model card in {models_dir}/ nor a "
                     "folder; set model to a card name (e.g. smollm2-135m-instruct) or an HF "
                     "folder path")


def dry_run(recipe, console) -> int:
    import yaml

    from localpeer.config import recipe_dict
    from localpeer.report import render_memory_estimate
    from localpeer.train.memory import ModelShape, estimate, expandable_segments, suggestions

    torch = require("torch")
    cuda = torch.cuda.is_available()
    card = model_card(recipe)
    try:
        path, targets = model_source(recipe)
        shape = ModelShape.from_config(path)
    except InputError:
        if not card or not card.architecture:
            raise
        targets, shape = card.lora_targets, ModelShape.from_dict(card.architecture)
    expandable = expandable_segments()  # as run_train has set it for this process
    est = estimate(recipe, shape, targets or tuple(shape.linear_shapes()), cuda=True,
                   expandable=expandable)
    total_gb = torch.cuda.get_device_properties(0).total_memory / 1024**3 if cuda else None
    render_memory_estimate(yaml.safe_dump(recipe_dict(recipe), sort_keys=False), est,
                           total_gb, console)
    # the card must hold the allocator's whole pool (reserved), not only what is allocated
    if total_gb is not None and est.device_gb > 0.95 * total_gb:
        raise InputError(
            f"this recipe needs about {est.device_gb:.1f} GiB ({est.reserved_gb:.1f} reserved by "
            f"PyTorch's allocator for {est.allocated_gb:.1f} allocated, plus the CUDA context) "
            f"but the GPU has {total_gb:.1f} GiB; try: " + "; ".join(suggestions(recipe,
                                                                               expandable)))
    return 0


def run_train(args) -> int:
    # before anything else: a missing package is told before a run folder is made or the
    # embedded default converted (need() looks for packages without importing them)
    need(*(("torch",) if args.dry_run else TRAIN_MODULES),
         why="training loads a Hugging Face model")
    # Then, before anything imports torch: the CUDA caching allocator reads its settings once,
    # at its first allocation, so a later change would be silently ignored
    from localpeer.train.memory import ALLOC_CONF, EXPANDABLE, use_expandable_segments

    if use_expandable_segments():
        log.info("%s=%s (set by localpeer train; set the variable yourself to override)",
                 ALLOC_CONF, EXPANDABLE)
    from rich.console import Console

    from localpeer.config import load_recipe
    from localpeer.pull import need_embedded_packages
    from localpeer.train.backends import resolve_backend

    # transformers imports bitsandbytes, whose CPU backend warns about optional kernels
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    recipe = load_recipe(args.recipe, args.overrides)
    if recipe.quantize == "nf4" and not args.dry_run:
        need("bitsandbytes", why="quantize: nf4 (or set quantize: none)")
    need_embedded_packages(recipe.model)
    if resolve_backend(recipe) == "unsloth":
        require("unsloth", why="backend: unsloth")  # first: it patches transformers on import
    console = Console()
    if args.dry_run:
        return dry_run(recipe, console)
    from localpeer.train.rundir import check_resume_recipe, restart_run

    if getattr(args, "restart", False):
        if args.resume:
            raise InputError("--resume and --restart exclude each other: --resume continues "
                             "the run, --restart moves it aside and starts over")
        aside = restart_run(recipe)
        if aside is not None:
            console.print(f"--restart: moved the old run to {aside}")
    elif args.resume:  # before the model loads: a refused resume costs nothing
        check_resume_recipe(recipe, Path(recipe.out_dir))
    path, targets = model_source(recipe)
    from localpeer.report import render_train_summary, train_live
    from localpeer.train.backends import load_policy
    from localpeer.train.loop import train

    with console.status(f"loading {path}"):
        policy = load_policy(recipe, path, targets)
    with train_live(console, recipe.train.steps) as (on_step, on_eval):
        summary = train(recipe, policy, resume=args.resume, on_step=on_step, on_eval=on_eval)
    render_train_summary(Path(recipe.out_dir), summary, console)
    return 0
