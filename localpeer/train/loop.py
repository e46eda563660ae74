"""The one training loop: QLoRA policy, Lag-DPO loss, eval, checkpoints, metrics.jsonl.

It reads top to bottom: load, tokenize, reference log-probs, then for every optimizer step
draw a stratified global batch, accumulate the weighted Lag-DPO loss over its micro-batches,
clip, step, move the duals, log; eval and checkpoint are plain `if` blocks on intervals.
Under `torchrun` (WORLD_SIZE > 1) each rank takes its share of every global batch and the
per-dimension sums are all-reduced, so the duals stay identical on every rank.

    from localpeer.train.loop import train
    summary = train(load_recipe("recipes/smollm2-135m-cpu.yaml"))
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from localpeer.config import Recipe
from localpeer.data.personaknob import read_records, record_pairs
from localpeer.deps import require
from localpeer.errors import InputError, WorkFailed
from localpeer.formats import append_jsonl, atomic_write_text
from localpeer.train import lagdpo
from localpeer.train.backends import Policy, adapter_state, load_adapter_state
from localpeer.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from localpeer.train.evaluate import (
    adapter_is_identity,
    evaluate,
    evaluate_logps,
    stratified_subset,
)
from localpeer.train.logps import (
    TokenizedPair,
    collate,
    sequence_logps,
    to_device,
    tokenize_pairs,
)
from localpeer.train.records import (
    first_eval,
    metrics_line,
    run_summary,
    step_lines,
    truncate_metrics,
)
from localpeer.train.reference import (
    LazyReference,
    compute_reference,
    reference_logps,
)
from localpeer.train.rundir import prepare_run, resume_point
from localpeer.train.sampler import RecordSampler, StratifiedSampler, token_micro_batches

torch = require("torch")
log = logging.getLogger(__name__)


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when run alone).

    Gradients are summed over ranks by hand rather than by a DDP wrapper: each rank's loss is
    already its exact share of the global objective, so the sum is the whole gradient."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)
        return cls(int(os.environ.get("RANK", "0")), world)

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t


@dataclass
class RunData:
    dims: tuple[str, ...]
    train: list[TokenizedPair]
    test: list[TokenizedPair]
    truncated: dict = field(default_factory=dict)


def load_pairs(recipe: Recipe, tokenizer) -> RunData:
    """Tokenized train and held-out pairs of the recipe's dimensions; each needs train pairs."""
    dims = tuple(recipe.data.dims)
    splits = {}
    truncated = {}
    for split, path in (("train", recipe.data.train), ("test", recipe.data.test)):
        pairs = [p for r in read_records(path) for p in record_pairs(r) if p.dim in dims]
        splits[split], cut = tokenize_pairs(tokenizer, pairs, dims, recipe.train.max_length,
                                            recipe.train.max_prompt_length)
        truncated[split] = {"prompts": cut.prompts, "responses": cut.responses}
    if recipe.train.eval_pairs:
        splits["test"] = stratified_subset(splits["test"], len(dims), recipe.train.eval_pairs)
    counts = {d: sum(p.dim == k for p in splits["train"]) for k, d in enumerate(dims)}
    empty = [d for d, n in counts.items() if n == 0]
    if empty:
        raise InputError(f"no training pairs for dimension(s) {', '.join(empty)} in "
                         f"{recipe.data.train}; drop them from data.dims or add records whose "
                         "mask has them")
    return RunData(dims, splits["train"], splits["test"], truncated)


def lr_lambda(recipe: Recipe) -> Callable[[int], float]:
    """Linear warmup, then cosine decay to 10% of the peak."""
    warm, total = recipe.train.warmup_steps, max(recipe.train.steps, 1)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min((step - warm) / max(total - warm, 1), 1.0)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    return f


OPTIMIZERS = {  # train.optimizer -> (module, class); the 8-bit ones run on CPU too
    "adamw": ("torch.optim", "AdamW"),
    "adamw_8bit": ("bitsandbytes.optim", "AdamW8bit"),
    "paged_adamw_8bit": ("bitsandbytes.optim", "PagedAdamW8bit"),
}


def resolve_optimizer(choice: str, device: torch.device) -> str:
    """`auto` is paged 8-bit AdamW on CUDA (its state pages to host memory under pressure),
    plain AdamW elsewhere; any explicit choice is kept, on any device."""
    if choice == "auto":
        return "paged_adamw_8bit" if device.type == "cuda" else "adamw"
    return choice


def make_optimizer(recipe: Recipe, policy: Policy):
    params = [p for p in policy.model.parameters() if p.requires_grad]
    module, name = OPTIMIZERS[resolve_optimizer(recipe.train.optimizer, policy.device)]
    cls = getattr(require(module), name)
    return cls(params, lr=recipe.train.lr, weight_decay=recipe.train.weight_decay)


def _save(run: Path, step, policy, optimizer, scheduler, sampler, duals, last_metrics,
          ref_train=None):
    if ref_train is not None:
        ref_train.save()
    tensors = {"lambdas": duals.lambdas, "loss_ema": duals.loss_ema,
               "seen": duals.seen.to(torch.uint8), "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():  # LoRA dropout on the GPU draws from the CUDA generators
        tensors.update({f"cuda_rng_{i}": state
                        for i, state in enumerate(torch.cuda.get_rng_state_all())})
    path = save_checkpoint(run / "checkpoints", step, adapter_state(policy.model), optimizer,
                           scheduler, {"sampler": sampler.state(), "last_metrics": last_metrics},
                           tensors)
    prune_checkpoints(run / "checkpoints")
    return path


def _restore(path: Path, policy, optimizer, scheduler, sampler):
    state, adapter, opt_state, tensors = load_checkpoint(path)
    load_adapter_state(policy.model, adapter)
    optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(state["scheduler"])
    sampler.load_state(state["sampler"])
    torch.set_rng_state(tensors["torch_rng"])
    cuda_keys = sorted((k for k in tensors if k.startswith("cuda_rng_")),
                       key=lambda k: int(k.removeprefix("cuda_rng_")))
    cuda_states = [tensors[k] for k in cuda_keys]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[:torch.cuda.device_count()])
    duals = lagdpo.DualState(tensors["lambdas"], tensors["loss_ema"], tensors["seen"].bool())
    return state["step"], duals


def save_adapter(policy: Policy, run: Path) -> None:
    """The final adapter as a standard PEFT folder, swapped into place atomically."""
    import shutil

    tmp = run / ".adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    policy.model.save_pretrained(str(tmp), safe_serialization=True)
    final = run / "adapter"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


class _StopFlag:
    """Ctrl-C (SIGINT) asks the loop to finish the step in flight, checkpoint and stop; a
    second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after this step (Ctrl-C again to abort at once)")

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def micro_batches(data: RunData, mine: list[int], recipe: Recipe,
                  share_prompt: bool) -> list[list[int]]:
    """This rank's pairs of one step as micro-batches: by padded token count when
    `train.micro_batch_tokens` is set (a small model on a big card then runs many pairs at
    once), else `train.grad_accum` equal slices."""
    if recipe.train.micro_batch_tokens > 0:
        return token_micro_batches(mine, [data.train[i] for i in mine],
                                   recipe.train.micro_batch_tokens, share_prompt)
    micro = max(len(mine) // recipe.train.grad_accum, 1)
    return [mine[m:m + micro] for m in range(0, len(mine), micro)]


def accumulate_step(policy: Policy, data: RunData, batch: list[int], weights: torch.Tensor,
                    ref_train: LazyReference | None, recipe: Recipe, dist: Dist, pad_id: int):
    """Forward and backward over this rank's share of one global batch, micro-batch by
    micro-batch. Returns the global per-dimension pair counts (host), the (3, K) per-dimension
    sums of (loss, margin, h > 0) over all ranks and the step's weighted loss (both on the
    device), and this rank's tokens.

    Nothing in here waits for the GPU (tests/gpu checks it with torch's sync debug mode): host
    tensors go over as pinned non-blocking copies and the statistics add up on the device; the
    caller's one copy back is the step's only synchronisation."""
    K = len(data.dims)
    device = policy.device
    loss_fn = lagdpo.LOSSES[recipe.dpo.loss]
    sft = recipe.train.objective == "sft"
    step_counts = torch.bincount(torch.tensor([data.train[i].dim for i in batch]), minlength=K)
    share = -(-len(batch) // dist.world)  # contiguous shares keep a record's pairs together
    mine = batch[dist.rank * share:(dist.rank + 1) * share]
    counts_dev, weights_dev = to_device(step_counts, device), to_device(weights, device)
    sums = torch.zeros(3, K, dtype=torch.float64, device=device)  # loss, margin, h > 0
    total = torch.zeros((), dtype=torch.float64, device=device)
    tokens = 0
    for ids in micro_batches(data, mine, recipe, policy.share_prompt):
        chunk = [data.train[i] for i in ids]
        tensors = collate(chunk, pad_id, policy.share_prompt)
        if ref_train is None:  # reference forward with the adapter off, per batch
            ref = compute_reference(policy, chunk, len(chunk), pad_id, keep_on_device=True)
        else:  # cached: computed the first time a pair is drawn
            ref = ref_train.get(ids, chunk)
        pc, pr = sequence_logps(policy.model, tensors)
        ref = to_device(ref, device)
        h = lagdpo.dpo_margins(pc, pr, ref[:, 0], ref[:, 1], recipe.dpo.beta)
        dim_idx = to_device(torch.tensor([p.dim for p in chunk]), device)
        if sft:  # the baseline: the goldens' NLL; h is still logged, as a DPO run logs it
            chosen_tokens = to_device(torch.tensor([len(p.chosen) for p in chunk]), device)
            losses = lagdpo.sft_loss(pc, chosen_tokens)
        else:
            losses = loss_fn(h, recipe.dpo.beta)
        loss = lagdpo.weighted_loss(losses, dim_idx, counts_dev, weights_dev)
        loss.backward()
        total += loss.detach()
        tokens += int(tensors["attention_mask"].sum())  # a host tensor: no sync
        for row, values in enumerate((losses, h, (h > 0).float())):
            sums[row].index_add_(0, dim_idx, values.detach().double())
    # each rank's loss is its share of sum_k w_k L_k (global N_k), so the exact gradient is
    # the sum over ranks; on the device, where NCCL reduces
    for p in policy.model.parameters():
        if p.grad is not None:
            dist.all_sum(p.grad)
    return step_counts, dist.all_sum(sums), dist.all_sum(total), tokens


def step_zero_eval(policy: Policy, data: RunData, ref_test: torch.Tensor, recipe: Recipe,
                   pad_id: int) -> dict:
    """The held-out eval before training; while the adapter is the identity the policy is the
    reference, so it comes from the reference log-probs with no forward pass."""
    if adapter_is_identity(policy.model):
        return evaluate_logps(data.test, ref_test, ref_test, data.dims, recipe)
    return evaluate(policy, data.test, ref_test, data.dims, recipe, pad_id)


def train(recipe: Recipe, policy: Policy, resume: bool = False,
          on_step: Callable[[dict], None] | None = None,
          on_eval: Callable[[dict], None] | None = None) -> dict:
    """Train `policy` by the recipe; returns the summary also written to summary.json."""
    dist = Dist.from_env()
    resume = resume_point(recipe, resume) if dist.rank == 0 else (
        resume and latest_checkpoint(Path(recipe.out_dir) / "checkpoints") is not None)
    run = prepare_run(recipe, resume) if dist.rank == 0 else Path(recipe.out_dir)
    tok = policy.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    data = load_pairs(recipe, tok)
    dims, K = data.dims, len(data.dims)
    cached = recipe.train.cache_reference
    ref_train = LazyReference(policy, data.train, recipe, pad_id) if cached else None
    ref_test = reference_logps(policy, data.test, recipe, pad_id, "test")
    global_batch = recipe.train.batch_size * recipe.train.grad_accum * dist.world
    dim_of_pair = [p.dim for p in data.train]
    if policy.share_prompt:
        sampler = RecordSampler(dim_of_pair, [p.record_id for p in data.train], K, global_batch,
                                recipe.train.seed)
    else:
        sampler = StratifiedSampler(dim_of_pair, K, global_batch, recipe.train.seed)
    optimizer = make_optimizer(recipe, policy)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(recipe))
    lag_cfg = recipe.lagrangian
    form = lagdpo.FORMS[lag_cfg.form]
    zero_loss = lagdpo.ZERO_MARGIN_LOSS[recipe.dpo.loss](recipe.dpo.beta)  # L0
    duals = lagdpo.DualState.initial(K, lag_cfg.form)
    start, last = 0, {}
    if resume:
        start, duals = _restore(latest_checkpoint(run / "checkpoints"), policy, optimizer,
                                scheduler, sampler)
        if dist.rank == 0:
            truncate_metrics(run / "metrics.jsonl", start)
        log.info("resumed from step %d", start)
    eval_before = first_eval(run / "metrics.jsonl") if resume else None
    if eval_before is None:
        eval_before = step_zero_eval(policy, data, ref_test, recipe, pad_id)
        if dist.rank == 0:
            append_jsonl(run / "metrics.jsonl", {"step": 0, "split": "eval", "dims": eval_before})
        if on_eval:
            on_eval({"step": 0, "split": "eval", "dims": eval_before})
    policy.model.train()
    stop = _StopFlag()
    with stop:
        for step in range(start + 1, recipe.train.steps + 1):
            if stop.requested:
                done = step - 1
                if dist.rank == 0 and done > start:
                    _save(run, done, policy, optimizer, scheduler, sampler, duals, last,
                          ref_train)
                raise WorkFailed(f"interrupted; checkpoint at step {done} in "
                                 f"{run / 'checkpoints'}; continue with --resume")
            t0 = time.perf_counter()
            batch = sampler.next_batch()
            weights = form.weights(duals.lambdas, lag_cfg)
            step_counts, sums, total, tokens = accumulate_step(
                policy, data, batch, weights, ref_train, recipe, dist, pad_id)
            sums, total = sums.cpu(), float(total)  # the step's one wait for the GPU
            if not math.isfinite(total):
                raise WorkFailed(
                    f"the loss became {total} at step {step}; nothing from this step was kept. "
                    f"The last good checkpoint is {latest_checkpoint(run / 'checkpoints')}. "
                    "Lower train.lr or dpo.beta, then resume with --resume")
            torch.nn.utils.clip_grad_norm_(
                [p for p in policy.model.parameters() if p.requires_grad],
                recipe.train.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            counts = step_counts.double().clamp(min=1)
            stats = lagdpo.PairStats(*(sums / counts), step_counts)
            if recipe.train.objective == "dpo":
                duals = form.dual_step(duals, stats.loss.float(), step_counts > 0, lag_cfg,
                                       zero_loss)
            else:  # sft: fixed weights 1/K; the EMAs are kept for the logs, the duals stay 0
                duals = lagdpo.track_losses(duals, stats.loss.float(), step_counts > 0,
                                            lag_cfg.ema)
            seconds = time.perf_counter() - t0
            last = metrics_line(step, total, scheduler.get_last_lr()[0],
                                 round(tokens * dist.world / seconds, 1), dims, stats, duals,
                                 weights, lag_cfg.form)
            if dist.rank == 0:
                append_jsonl(run / "metrics.jsonl", last)
                if on_step:
                    on_step(last)
            if recipe.train.eval_every and step % recipe.train.eval_every == 0 \
                    and step != recipe.train.steps and dist.rank == 0:
                line = {"step": step, "split": "eval",
                        "dims": evaluate(policy, data.test, ref_test, dims, recipe, pad_id)}
                append_jsonl(run / "metrics.jsonl", line)
                if on_eval:
                    on_eval(line)
            if recipe.train.checkpoint_every and step % recipe.train.checkpoint_every == 0 \
                    and dist.rank == 0:
                _save(run, step, policy, optimizer, scheduler, sampler, duals, last, ref_train)
    eval_after = evaluate(policy, data.test, ref_test, dims, recipe, pad_id)
    summary = {}
    if dist.rank == 0:
        line = {"step": recipe.train.steps, "split": "eval", "dims": eval_after}
        append_jsonl(run / "metrics.jsonl", line)
        if on_eval:
            on_eval(line)
        _save(run, recipe.train.steps, policy, optimizer, scheduler, sampler, duals, last,
              ref_train)
        save_adapter(policy, run)
        summary = run_summary(recipe, data, eval_before, eval_after, duals,
                              step_lines(run / "metrics.jsonl"), zero_loss)
        atomic_write_text(run / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
