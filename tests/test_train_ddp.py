"""The same loop under torch.distributed: two gloo processes on the CPU take their halves of
each global batch and reproduce the single-process first step."""

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, tiny: str, tmp: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)
    from test_train import recipe_for

    from localpeer.train.backends import load_policy
    from localpeer.train.loop import train

    recipe = recipe_for(Path(tiny), Path(tmp), "train.batch_size=4", steps=2)
    train(recipe, load_policy(recipe, Path(tiny)))
    torch.distributed.destroy_process_group()


def _step_lines(run: Path):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()
            if "split" not in json.loads(x)]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    from test_train import recipe_for
    from tiny import make_tiny_model_dir

    from localpeer.train.backends import load_policy
    from localpeer.train.loop import train

    tiny = make_tiny_model_dir(tmp_path / "model")
    single = recipe_for(tiny, tmp_path / "single", "train.batch_size=8", steps=2)
    train(single, load_policy(single, tiny))
    mp.spawn(_worker, args=(2, _free_port(), str(tiny), str(tmp_path / "ddp")), nprocs=2,
             join=True)
    one = _step_lines(tmp_path / "single" / "run")
    two = _step_lines(tmp_path / "ddp" / "run")
    assert len(one) == len(two) == 2
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], abs=1e-6)
    for d in "ATEC":
        assert two[0]["dims"][d]["pairs"] == one[0]["dims"][d]["pairs"]
        assert two[0]["dims"][d]["loss"] == pytest.approx(one[0]["dims"][d]["loss"], abs=1e-6)
    # gradients were summed over the ranks, so the second step matches too
    assert two[1]["loss"] == pytest.approx(one[1]["loss"], abs=1e-5)
