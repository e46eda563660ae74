"""Checkpoints store any optimizer's state without pickle: torch AdamW and bitsandbytes'
8-bit optimizers (AdamW8bit, PagedAdamW8bit, whose state nests its quantization maps), with
the same code that CUDA runs use. bitsandbytes' 8-bit optimizers run on the CPU too."""

import json

import pytest
import torch

from localpeer.train.checkpoint import (
    _decode,
    _encode,
    load_checkpoint,
    save_checkpoint,
)

bnb = pytest.importorskip("bitsandbytes")
QUANT_STATE = "__bnb_optimizer_quant_state__"


def test_nested_state_round_trips_with_types_kept():
    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.arange(4.0),
                           QUANT_STATE: {"qmap1": torch.linspace(-1, 1, 8),
                                         "absmax1": torch.ones(2), "count": 7}},
                       5: {"step": 2, "flag": None}},
             "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 5],
                               "amsgrad": False, "name": "lora"}]}
    tensors = {}
    encoded = json.loads(json.dumps(_encode(state, "", tensors)))  # through JSON, as on disk
    assert set(tensors) == {"/state/0/step", "/state/0/exp_avg",
                            f"/state/0/{QUANT_STATE}/qmap1", f"/state/0/{QUANT_STATE}/absmax1"}
    back = _decode(encoded, tensors)
    assert list(back["state"]) == [0, 5]  # int keys stay ints
    assert back["state"][0]["step"].dim() == 0 and back["state"][0]["step"].dtype == torch.float32
    assert torch.equal(back["state"][0][QUANT_STATE]["qmap1"], torch.linspace(-1, 1, 8))
    assert back["state"][0][QUANT_STATE]["count"] == 7 and back["state"][5] == {"step": 2,
                                                                               "flag": None}
    assert back["param_groups"][0]["betas"] == (0.9, 0.999)  # a tuple again


def test_unstorable_state_is_refused_by_name():
    with pytest.raises(TypeError, match="/state/0/fn.*function"):
        _encode({"state": {0: {"fn": print}}}, "", {})


def _model(seed=0):
    torch.manual_seed(seed)
    # 64 x 128 = 8,192 elements: above bitsandbytes' min_8bit_size (4,096), so the first
    # layer's state is 8-bit (quantization maps nested); the bias stays 32-bit
    return torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))


def _steps(model, optimizer, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(16, 128, generator=g)
        loss = model(x).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("cls", ["AdamW", "AdamW8bit", "PagedAdamW8bit"])
def test_optimizer_checkpoint_resumes_exactly(cls, tmp_path):
    """Three steps, save, load into a fresh model and optimizer, three more steps: the weights
    equal those of six uninterrupted steps bit for bit."""
    make = getattr(torch.optim, cls, None) or getattr(bnb.optim, cls)
    whole = _model()
    opt = make(whole.parameters(), lr=1e-2)
    _steps(whole, opt, 3, seed=1)
    _steps(whole, opt, 3, seed=2)

    cut = _model()
    opt = make(cut.parameters(), lr=1e-2)
    _steps(cut, opt, 3, seed=1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    adapter = {k: v.detach().clone() for k, v in cut.state_dict().items()}
    path = save_checkpoint(tmp_path, 3, adapter, opt, sched, {}, {"x": torch.zeros(1)})
    state, adapter_back, opt_state, _ = load_checkpoint(path)
    if cls != "AdamW":
        assert QUANT_STATE in json.dumps(state["optimizer"])  # the nested state was stored
    resumed = _model(seed=99)
    resumed.load_state_dict(adapter_back)
    opt2 = make(resumed.parameters(), lr=1e-2)
    opt2.load_state_dict(opt_state)
    _steps(resumed, opt2, 3, seed=2)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_shared_tensors_are_stored_once_and_shared_again():
    qmap = torch.linspace(-1, 1, 8)
    state = {"state": {0: {"qmap1": qmap}, 1: {"qmap1": qmap, "own": qmap.clone()}}}
    tensors = {}
    back = _decode(json.loads(json.dumps(_encode(state, "", tensors))), tensors)
    assert set(tensors) == {"/state/0/qmap1", "/state/1/own"}
    assert back["state"][1]["qmap1"] is back["state"][0]["qmap1"]
    assert torch.equal(back["state"][1]["own"], qmap)
