"""Template-safe truncation (METHOD.md §2, last paragraph): what training sees is what chat
sees, cut only where the cut is harmless.

The rendered prompt keeps the chat template whole (system block, every role header, the
generation prompt); an over-long prompt loses the *oldest content tokens of the user's
message*, never template tokens. An over-long response loses its tail.

The user's text is located in the rendered prompt by its character span, and the tokens
inside that span are the only ones that may go: with a fast tokenizer through its offset
mapping (one tokenization of the whole prompt, the ids chat would see), otherwise by
tokenizing the text before, in and after the span separately.

    from localpeer.train.truncation import prompt_ids
    ids, cut = prompt_ids(tokenizer, head_text, user_text, max_prompt_length=256)
"""

from __future__ import annotations

from localpeer.errors import InputError


def content_span(rendered: str, content: str) -> tuple[int, int] | None:
    """(start, end) characters of the user's text in the rendered prompt (templates may trim
    it), or None when the template rewrote it beyond recognition."""
    for text in (content, content.strip()):
        if text:
            start = rendered.rfind(text)  # the last occurrence: a system prompt may quote it
            if start >= 0:
                return start, start + len(text)
    return None


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _split_ids(tokenizer, rendered: str, span: tuple[int, int]) -> tuple[list, list, list]:
    """(template ids before the user's text, the text's ids, template ids after)."""
    start, end = span
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        inside = [k for k, (a, b) in enumerate(offsets) if a >= start and b <= end and b > a]
        if inside:
            first, last = inside[0], inside[-1] + 1
            return ids[:first], ids[first:last], ids[last:]
    return (_ids(tokenizer, rendered[:start]), _ids(tokenizer, rendered[start:end]),
            _ids(tokenizer, rendered[end:]))


def prompt_ids(tokenizer, rendered: str, content: str,
               max_prompt_length: int) -> tuple[list[int], bool]:
    """The rendered prompt's token ids, at most `max_prompt_length`, and whether it was cut.

    Only the oldest tokens of the user's text go. Example: template ids [S S U] + content
    [c1 c2 c3 c4] + [E A] with a limit of 7 -> [S S U c3 c4 E A]."""
    span = content_span(rendered, content)
    if span is None:
        ids = _ids(tokenizer, rendered)
        if len(ids) <= max_prompt_length:
            return ids, False
        raise InputError("the chat template rewrites the user's message, so a prompt of "
                         f"{len(ids)} tokens cannot be cut safely to train.max_prompt_length="
                         f"{max_prompt_length}; raise train.max_prompt_length")
    before, text, after = _split_ids(tokenizer, rendered, span)
    excess = len(before) + len(text) + len(after) - max_prompt_length
    if excess <= 0:
        return before + text + after, False
    if excess >= len(text):
        raise InputError(f"the chat template alone takes {len(before) + len(after)} tokens, "
                         f"which leaves no room for the user's message within "
                         f"train.max_prompt_length={max_prompt_length}; raise it")
    return before + text[excess:] + after, True


def response_ids(tokenizer, text: str, room: int) -> tuple[list[int], bool]:
    """The response's ids cut to `room` tokens from the right (the head is kept)."""
    ids = _ids(tokenizer, text)
    return (ids[:room], True) if len(ids) > room else (ids, False)
