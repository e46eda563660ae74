"""The training loop on a tiny random Llama, CPU: collapse, QLoRA, resume, bad input."""

import json
import math
import os
import random
import signal

import pytest
import torch
from tiny import CORPUS, make_tiny_model_dir

from localpeer.cli import main
from localpeer.config import load_recipe
from localpeer.errors import InputError, WorkFailed
from localpeer.train import lagdpo
from localpeer.train.backends import keep_4bit_differentiable, load_policy
from localpeer.train.loop import train

WORDS = " ".join(CORPUS).lower().replace(",", "").replace(".", "").split()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


def write_synthetic(path, per_dim=40, seed=0, dims="ATEC", conflict=False):
    """Dimension A is trivially separable (every token differs); T, E and C differ in one
    final word, which a tiny LoRA learns slowly: the setting where plain multi-objective DPO
    lets the easy dimension run away. With `conflict`, that final word is "no" over "yes",
    the opposite of A's preference ("yes" over "no"), so A's gradient, through the shared
    LoRA weights, also pushes against the others: the leader drags the policy back."""
    good, bad = ("no", "yes") if conflict else ("honey", "babies")
    rng = random.Random(seed)
    with open(path, "w") as f:
        for k, d in enumerate(d for d in dims for _ in range(per_dim)):
            prompt = " ".join(rng.choice(WORDS) for _ in range(8))
            if d == "A":
                golden, reject = " ".join(["yes"] * 12), " ".join(["no"] * 12)
            else:
                base = " ".join(rng.choice(WORDS) for _ in range(12))
                golden, reject = f"{base} {good}", f"{base} {bad}"
            rec = {"id": f"s{k}", "mask": [d], "seed_scene": "s", "context": "c",
                   "trigger": "t", "prompt": prompt, "golden": golden}
            rec.update({f"reject_{x}": reject if x == d else None for x in "ATEC"})
            f.write(json.dumps(rec) + "\n")
    return path


def recipe_for(tiny, tmp_path, *extra, steps=8):
    tmp_path.mkdir(parents=True, exist_ok=True)
    train_file = write_synthetic(tmp_path / "train.jsonl")
    test_file = write_synthetic(tmp_path / "test.jsonl", per_dim=4, seed=1)
    return load_recipe(None, [
        f"model={tiny}", f"out_dir={tmp_path / 'run'}", f"train.steps={steps}",
        "train.batch_size=8", "train.lr=1e-3", "train.warmup_steps=0", "train.eval_every=0",
        "train.checkpoint_every=0", "train.max_length=64", "lora.rank=4",
        f"data.train={train_file}", f"data.test={test_file}", *extra])


def ema_spread(line):
    emas = [v["loss_ema"] for v in line["dims"].values()]
    return max(emas) - min(emas)


COLLAPSE_ARMS = {"off": ["lagrangian.dual_lr=0"],
                 "leader": ["lagrangian.form=leader", "lagrangian.dual_lr=0.5"],
                 "pairwise": ["lagrangian.form=pairwise", "lagrangian.dual_lr=0.5"]}


def test_collapse_without_duals_and_lift_with_the_leader_form(tiny, tmp_path):
    """The easy-dimension setup with a conflict (write_synthetic(conflict=True): A prefers
    "yes", the others a final "no"), 60 steps an arm, the same seed and data. Without duals A
    runs ahead and the spread of the EMA losses ends above eps * L0. With the leader form (the
    default): the spread ends within eps * L0 + 0.05, every lagging dimension's held-out loss
    ends lower than without duals, and the leader's held-out loss ends no more than 0.05 above
    its duals-off value. The pairwise form (the first version, eps = 0.5 in raw loss units)
    runs beside them and is printed, not held to the goal.

    dual_lr is 0.5 here, ten times the default, because 60 steps stand in for a run of
    hundreds: at the default the lambdas reach about 0.25 by step 60 and the same three checks
    hold with less room (spread 0.388 against 0.397 when this test was written). max_length
    128 cuts nothing; at 64, three quarters of the T/E/C pairs lost their final word, the only
    difference, and became identical pairs that nothing can learn."""
    bound = 0.5 * math.log(2)  # eps * L0, sigmoid
    train_file = write_synthetic(tmp_path / "train.jsonl", conflict=True)
    test_file = write_synthetic(tmp_path / "test.jsonl", per_dim=4, seed=1, conflict=True)
    runs = {}
    for arm, extra in COLLAPSE_ARMS.items():
        lines = []
        recipe = recipe_for(tiny, tmp_path / arm, *extra, "train.cache_reference=false",
                            "train.max_length=128", f"data.train={train_file}",
                            f"data.test={test_file}", steps=60)
        summary = train(recipe, load_policy(recipe, tiny), on_step=lines.append)
        runs[arm] = (lines[-1], {d: v["loss"] for d, v in summary["eval_after"].items()},
                     summary["constraint"])
    for arm, (last, held, constraint) in runs.items():
        print(f"{arm:9s} spread {ema_spread(last):.3f} (bound {bound:.3f}) held-out "
              + " ".join(f"{d} {v:.3f}" for d, v in held.items())
              + f" lambdas {last['lambdas']} max spread {constraint['max_spread']:.3f}")
    off, leader = runs["off"], runs["leader"]
    assert ema_spread(off[0]) > bound  # the collapse this method exists for
    assert not off[2]["engaged"] and leader[2]["engaged"]
    assert ema_spread(leader[0]) <= bound + 0.05
    first = min(off[1], key=off[1].get)  # the leader without duals: A
    assert first == "A"
    for d in "TEC":
        assert leader[1][d] < off[1][d], (d, leader[1][d], off[1][d])
    assert leader[1][first] <= off[1][first] + 0.05
    lam = leader[0]["lambdas"]
    assert lam["A"] == 0.0 and min(lam["T"], lam["E"], lam["C"]) > 0


def test_metrics_lines_follow_the_contract(tiny, tmp_path):
    recipe = recipe_for(tiny, tmp_path, steps=3)
    summary = train(recipe, load_policy(recipe, tiny))
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [ln for ln in lines if ln.get("split") != "eval"]
    assert [ln["step"] for ln in steps] == [1, 2, 3]
    for key in ("step", "loss", "lr", "tokens_per_s", "peak_mem_mb", "dims", "lambdas",
                "best_loss"):
        assert key in steps[0]
    assert set(steps[0]["dims"]["A"]) == {"loss", "loss_ema", "margin", "accuracy", "weight",
                                          "pairs"}
    # the leader form (default): one lambda per dimension, L* the smallest EMA loss
    assert set(steps[0]["lambdas"]) == set("ATEC")
    for ln in steps:
        assert ln["best_loss"] == pytest.approx(min(d["loss_ema"] for d in ln["dims"].values()))
        for d in ln["dims"].values():
            assert d["weight"] >= 0.25 - 1e-9  # w_k = 1/K + lambda_k
    assert set(summary["constraint"]) >= {"form", "bound", "max_spread", "engaged"}
    assert summary["constraint"]["bound"] == pytest.approx(0.5 * math.log(2))
    pairwise = recipe_for(tiny, tmp_path / "pairwise", "lagrangian.form=pairwise", steps=1)
    train(pairwise, load_policy(pairwise, tiny))
    line = json.loads((tmp_path / "pairwise" / "run" / "metrics.jsonl").read_text()
                      .splitlines()[1])
    assert len(line["lambdas"]) == 12 and "A>T" in line["lambdas"]
    # stratified: every dimension has pairs in every step
    assert all(ln["dims"][d]["pairs"] >= 1 for ln in steps for d in "ATEC")
    evals = [ln for ln in lines if ln.get("split") == "eval"]
    assert [ln["step"] for ln in evals] == [0, 3]
    run = tmp_path / "run"
    assert (run / "adapter" / "adapter_config.json").exists()
    assert (run / "adapter" / "adapter_model.safetensors").exists()
    assert (run / "recipe.yaml").exists() and json.loads((run / "summary.json").read_text())
    assert summary["mean_accuracy_before"] is not None


def _lora_and_base(model):
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    return lora, base


def test_qlora_nf4_on_cpu_trains_lora_only_and_reloads(tiny, tmp_path):
    import bitsandbytes as bnb
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    recipe = recipe_for(tiny, tmp_path, "quantize=nf4", steps=4)
    policy = load_policy(recipe, tiny)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in policy.model.modules())
    lora0, base0 = _lora_and_base(policy.model)
    train(recipe, policy)
    lora1, base1 = _lora_and_base(policy.model)
    assert any(not torch.equal(lora0[n], lora1[n]) for n in lora0)
    assert all(torch.equal(base0[n], base1[n]) for n in base0)
    ids = torch.tensor([[5, 17, 40, 3, 99, 7]])
    policy.model.eval()
    with torch.no_grad():
        expected = policy.model(input_ids=ids).logits
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                           bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(str(tiny), quantization_config=q,
                                                device_map={"": "cpu"}, dtype=torch.float32)
    assert keep_4bit_differentiable(base) > 0  # as load_policy does (see its docstring)
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "run" / "adapter")).eval()
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the 4-bit weights were never repacked for bitsandbytes' non-differentiable CPU kernel
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False)
                   for m in policy.model.modules() if isinstance(m, bnb.nn.Linear4bit))


def test_adapter_reloads_exactly_in_fp32(tiny, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    recipe = recipe_for(tiny, tmp_path, steps=3)
    policy = load_policy(recipe, tiny)
    train(recipe, policy)
    ids = torch.tensor([[5, 17, 40, 3, 99, 7]])
    policy.model.eval()
    with torch.no_grad():
        expected = policy.model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32)
        reloaded = PeftModel.from_pretrained(base, str(tmp_path / "run" / "adapter")).eval()
        got = reloaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _step_lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()
            if "split" not in json.loads(x)]


def _same(a, b):
    for key in ("step", "loss", "lr"):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
    for d in a["dims"]:
        for k, v in a["dims"][d].items():
            assert v == pytest.approx(b["dims"][d][k], abs=1e-6), (d, k)
    for k, v in a["lambdas"].items():
        assert v == pytest.approx(b["lambdas"][k], abs=1e-6), k


@pytest.mark.parametrize("optimizer", ["adamw", "adamw_8bit", "paged_adamw_8bit"])
def test_resume_reproduces_the_uninterrupted_run(tiny, tmp_path, optimizer):
    """Interrupted at step 5 (SIGINT, as Ctrl-C), resumed, the metrics equal those of the
    uninterrupted run to 1e-6, with each optimizer a run can choose; the bitsandbytes 8-bit
    ones, CUDA's default, run on the CPU too. lora.rank=64 makes the LoRA A matrices 4,096
    elements, bitsandbytes' threshold for 8-bit state, so the nested quantization state is
    checkpointed and restored."""
    extra = ("lagrangian.dual_lr=0.5", "lagrangian.tolerance=0.0",
             f"train.optimizer={optimizer}", "lora.rank=64", "train.checkpoint_every=2")
    whole = recipe_for(tiny, tmp_path / "whole", *extra, steps=8)
    train(whole, load_policy(whole, tiny))
    cut = recipe_for(tiny, tmp_path / "cut", *extra, steps=8)

    def interrupt(line):
        if line["step"] == 5:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: finish the step, checkpoint, stop

    with pytest.raises(WorkFailed, match="checkpoint at step 5"):
        train(cut, load_policy(cut, tiny), on_step=interrupt)
    assert len(_step_lines(tmp_path / "cut" / "run" / "metrics.jsonl")) == 5
    if optimizer != "adamw":
        meta = (tmp_path / "cut" / "run" / "checkpoints" / "step-5" / "state.json").read_text()
        assert "__bnb_optimizer_quant_state__" in meta  # 8-bit state, nested, was stored
    train(cut, load_policy(cut, tiny), resume=True)
    a = _step_lines(tmp_path / "whole" / "run" / "metrics.jsonl")
    b = _step_lines(tmp_path / "cut" / "run" / "metrics.jsonl")
    assert len(a) == len(b) == 8
    assert any(v > 0 for v in a[-1]["lambdas"].values())  # the duals moved and were restored
    for x, y in zip(a, b):
        _same(x, y)


def test_micro_batches_by_tokens_give_the_same_steps(tiny, tmp_path, monkeypatch):
    """The loss of a step does not depend on how its pairs are split into micro-batches: a
    token budget that splits every step into several micro-batches gives the metrics of one
    micro-batch a step (to float32 rounding)."""
    from localpeer.train import loop

    splits = []
    real = loop.micro_batches
    monkeypatch.setattr(loop, "micro_batches",
                        lambda *a: (lambda out: splits.append(len(out)) or out)(real(*a)))
    lines = {}
    for budget in (0, 96):
        got = []
        splits.clear()
        recipe = recipe_for(tiny, tmp_path / str(budget), f"train.micro_batch_tokens={budget}",
                            "train.cache_reference=false", steps=3)
        train(recipe, load_policy(recipe, tiny), on_step=got.append)
        lines[budget] = got
        assert splits == [1] * 3 if budget == 0 else min(splits) >= 2
    for x, y in zip(lines[0], lines[96]):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)
        for d in x["dims"]:
            assert x["dims"][d]["loss"] == pytest.approx(y["dims"][d]["loss"], abs=1e-5)


def test_nan_loss_stops_and_names_the_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    calls = {"n": 0}

    def flaky(h, beta):  # NaN from the fourth training step on (eval calls do not count)
        calls["n"] += h.requires_grad
        out = lagdpo.sigmoid_loss(h, beta)
        return out * float("nan") if calls["n"] > 3 else out

    monkeypatch.setitem(lagdpo.LOSSES, "sigmoid", flaky)
    recipe = recipe_for(tiny, tmp_path, "train.checkpoint_every=2", steps=6)
    with pytest.raises(WorkFailed, match=r"loss became nan at step 4.*step-2"):
        train(recipe, load_policy(recipe, tiny))
    assert (tmp_path / "run" / "checkpoints" / "step-2" / "adapter.safetensors").exists()


def test_no_pairs_for_a_recipe_dimension(tiny, tmp_path):
    train_file = write_synthetic(tmp_path / "train.jsonl", dims="ATE")
    recipe = load_recipe(None, [f"model={tiny}", f"out_dir={tmp_path / 'run'}",
                                f"data.train={train_file}", f"data.test={train_file}"])
    with pytest.raises(InputError, match="no training pairs for dimension.*C"):
        train(recipe, load_policy(recipe, tiny))


def test_cli_bad_recipe_and_missing_model(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  stpes: 3\n")
    assert main(["train", str(recipe)]) == 2
    assert "unknown key 'train.stpes'; did you mean 'train.steps'?" in capsys.readouterr().err
    recipe.write_text(f"model: {tmp_path / 'nowhere'}\n")
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "localpeer pull" in err or "folder" in err


def test_sft_objective_trains_the_goldens_without_duals(tiny, tmp_path):
    """train.objective=sft (the ablation's baseline): the logged loss is the goldens' mean
    token NLL (positive, falling over steps), the weights stay 1/K and no lambda moves."""
    recipe = recipe_for(tiny, tmp_path, "train.objective=sft", "lagrangian.dual_lr=5.0",
                        steps=6)
    lines = []
    summary = train(recipe, load_policy(recipe, tiny), on_step=lines.append)
    assert all(ln["loss"] > 0 for ln in lines) and lines[-1]["loss"] < lines[0]["loss"]
    assert all(v == 0.0 for ln in lines for v in ln["lambdas"].values())
    assert all(d["weight"] == pytest.approx(0.25) for ln in lines for d in ln["dims"].values())
    assert math.isfinite(lines[-1]["best_loss"]) and not summary["constraint"]["engaged"]


def test_step_zero_eval_from_the_reference_equals_the_forward_pass(tiny, tmp_path):
    """While every LoRA B is zero the policy is the reference, so the step-0 held-out eval is
    computed from the reference log-probs alone: the same numbers as a forward pass."""
    from localpeer.train.evaluate import adapter_is_identity, evaluate, evaluate_logps
    from localpeer.train.loop import load_pairs
    from localpeer.train.reference import compute_reference

    recipe = recipe_for(tiny, tmp_path)
    policy = load_policy(recipe, tiny)
    data = load_pairs(recipe, policy.tokenizer)
    pad = policy.tokenizer.pad_token_id
    ref = compute_reference(policy, data.test, 4, pad)
    assert adapter_is_identity(policy.model)
    full = evaluate(policy, data.test, ref, data.dims, recipe, pad)
    short = evaluate_logps(data.test, ref, ref, data.dims, recipe)
    for d in full:
        for key, value in full[d].items():
            assert short[d][key] == pytest.approx(value, abs=1e-6), (d, key)
    with torch.no_grad():
        next(p for n, p in policy.model.named_parameters() if "lora_B" in n).add_(0.1)
    assert not adapter_is_identity(policy.model)
