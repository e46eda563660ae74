"""Nothing in localpeer's training step waits for the GPU: with torch's sync debug mode on,
one step of the loop (`accumulate_step`) triggers no synchronising call from localpeer's own
code. Calls inside transformers, peft or bitsandbytes are printed, not failed: they are
outside this repository, and the summary shows how many there are.

    python -m pytest tests/gpu/test_hot_path.py -q -rA -s
"""

import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from test_cuda_training import make_gpu_model_dir, write_records  # noqa: E402

from localpeer.config import load_recipe  # noqa: E402
from localpeer.train import lagdpo  # noqa: E402
from localpeer.train.backends import load_policy  # noqa: E402
from localpeer.train.loop import Dist, accumulate_step, load_pairs  # noqa: E402
from localpeer.train.reference import LazyReference  # noqa: E402
from localpeer.train.sampler import RecordSampler  # noqa: E402

pytestmark = pytest.mark.gpu
PACKAGE = str(Path(__file__).resolve().parents[2] / "localpeer")


@pytest.mark.parametrize("cached", [True, False])
def test_a_training_step_never_waits_for_the_gpu_in_localpeer_code(tmp_path, monkeypatch,
                                                                   cached):
    monkeypatch.chdir(tmp_path)  # the reference cache lands here
    model = make_gpu_model_dir(tmp_path / "model")
    recipe = load_recipe(None, [
        f"model={model}", f"out_dir={tmp_path / 'run'}", "quantize=nf4", "backend=peft",
        "train.batch_size=8", "train.micro_batch_tokens=256", "train.max_length=96",
        "train.gradient_checkpointing=true", "lora.rank=8", f"train.cache_reference={cached}",
        f"data.train={write_records(tmp_path / 'train.jsonl', 8, 0)}",
        f"data.test={write_records(tmp_path / 'test.jsonl', 2, 1)}"])
    policy = load_policy(recipe, model)
    tok = policy.tokenizer
    data = load_pairs(recipe, tok)
    ref = LazyReference(policy, data.train, recipe, tok.pad_token_id) if cached else None
    sampler = RecordSampler([p.dim for p in data.train], [p.record_id for p in data.train],
                            len(data.dims), 8, 0)
    weights = lagdpo.FORMS["leader"].weights(lagdpo.DualState.initial(len(data.dims)).lambdas,
                                             recipe.lagrangian)
    policy.model.train()
    for _ in range(2):  # warm: the first step allocates, initialises kernels and caches
        accumulate_step(policy, data, sampler.next_batch(), weights, ref, recipe, Dist(),
                        tok.pad_token_id)
    torch.cuda.synchronize()
    batch = sampler.next_batch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            _, sums, total, _ = accumulate_step(policy, data, batch, weights, ref, recipe,
                                                Dist(), tok.pad_token_id)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    ours = [f"{w.filename}:{w.lineno}" for w in syncs if w.filename.startswith(PACKAGE)]
    others = sorted({f"{w.filename}:{w.lineno}" for w in syncs} - set(ours))
    print(f"cached={cached}: {len(syncs)} synchronising calls; in localpeer: {len(ours)}; "
          f"elsewhere: {others}")
    assert sums.device.type == "cuda" and total.device.type == "cuda"
    assert torch.isfinite(total.cpu())
    assert not ours, f"localpeer code waits for the GPU at {ours}"
