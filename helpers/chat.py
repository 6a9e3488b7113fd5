"""Chat templates: the one this series sets, and checks that a model's template suits TRL (notebook 02; why: docs/);
`stream_reply`, a greedy reply streamed piece by piece (notebook 05's chat, `python -m runner.chat`)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

# Explicit {{ '\n' }} pieces: Jinja's trim_blocks eats a literal newline after a {% ... %} tag. EOS follows the
# assistant's text directly, so TRL's "append EOS unless the last token is EOS" never doubles it.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{{ '### User:\n' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '### Assistant:\n' + message['content'] + eos_token }}"
    "{% if not loop.last %}{{ '\n\n' }}{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
)

_PROBE_ANSWER = "Zq7 probe answer"  # a string no template contains, to find where the answer sits


class ChatTemplateError(ValueError):
    """The tokenizer's chat template can't train with ORPO as it is; the message names the problem and the fix."""


@dataclass(frozen=True)
class TemplateFacts:
    """What notebook 02 learns about a tokenizer's chat template (and 05 uses to stop generations)."""
    accepts_system_turn: bool       # Gemma-style templates raise on a system message
    end_of_turn: str                # what the template writes right after an assistant answer ("" if nothing)
    stop_token_ids: tuple[int, ...]  # EOS plus the template's end-of-turn token, if that is another token


def template_facts(tokenizer) -> TemplateFacts:
    """Render a probe conversation to see how the template treats a system turn and ends an answer."""
    user = [{"role": "user", "content": "Hi"}]
    try:
        tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."}, *user], tokenize=False)
        system_ok = True
    except Exception:  # jinja's raise_exception('System role not supported') and friends
        system_ok = False
    text = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": _PROBE_ANSWER}], tokenize=False)
    end = text[text.rindex(_PROBE_ANSWER) + len(_PROBE_ANSWER):] if _PROBE_ANSWER in text else ""
    stops = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    end_ids = tokenizer(end, add_special_tokens=False)["input_ids"] if end.strip() else []
    if end_ids and end_ids[0] in set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder):
        stops.append(end_ids[0])  # e.g. <|eot_id|> (Llama-3) or <end_of_turn> (Gemma), when it is not the EOS
    return TemplateFacts(system_ok, end, tuple(dict.fromkeys(stops)))


def fold_system_turn(example: dict) -> dict:
    """For templates that reject a system turn: prepend its text to the first user message (notebook 02)."""
    prompt = example["prompt"]
    if not prompt or prompt[0]["role"] != "system":
        return example
    system, rest = prompt[0]["content"], list(prompt[1:])
    user = next((i for i, message in enumerate(rest) if message["role"] == "user"), None)
    if user is None:
        rest.insert(0, {"role": "user", "content": system})
    else:
        rest[user] = {"role": "user", "content": f"{system}\n\n{rest[user]['content']}"}
    return {**example, "prompt": rest}


def prompt_and_answer_texts(tokenizer, prompt: list[dict], answer: list[dict]) -> tuple[str, str]:
    """The two strings TRL tokenizes (trl.data_utils.apply_chat_template): the prompt rendered with the generation
    prompt, cut to its common prefix with prompt+answer (DeepSeek-R1-style templates differ there), and the rest."""
    gen = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
    n = len(os.path.commonprefix([gen, full]))
    return full[:n], full[n:]


def trl_tokens(tokenizer, prompt_text: str, answer_text: str, full_ids=None, prompt_ids=None) -> tuple[list[int], int]:
    """(ids of prompt + answer, number of prompt tokens) exactly as trl 1.16's ORPOTrainer builds them (docs/);
    pass `full_ids` / `prompt_ids` when they were tokenized in a batch."""
    if full_ids is None:
        full_ids = tokenizer(prompt_text + answer_text, add_special_tokens=False)["input_ids"]
    if prompt_ids is None:
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    start = len(prompt_ids) - (prompt_ids != full_ids[:len(prompt_ids)])
    prompt, answer = list(full_ids[:start]), list(full_ids[start:])
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is not None and (not prompt or prompt[0] != bos):
        prompt = [bos] + prompt
    if not answer or answer[-1] != eos:
        answer = answer + [eos]
    return prompt + answer, len(prompt)


def check_for_trl(tokenizer, example: dict, answer: str = "chosen") -> tuple[list[int], int]:
    """Check one pair as ORPOTrainer will tokenize it (notebook 02): (ids, prompt length), or ONE clear error."""
    fix = ("Fix: set a template that fits (tokenizer.chat_template = helpers.chat.CHAT_TEMPLATE works for any "
           "tokenizer with BOS/EOS), or pick the model's chat/instruct variant.")
    if tokenizer.eos_token_id is None:
        raise ChatTemplateError("The tokenizer has no EOS token, and TRL ends every answer with one. Fix: set "
                                "tokenizer.eos_token to the token that ends a turn (e.g. '</s>' or '<|im_end|>').")
    prompt_text, answer_text = prompt_and_answer_texts(tokenizer, example["prompt"], example[answer])
    full = tokenizer(prompt_text + answer_text, add_special_tokens=False)["input_ids"]
    alone = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    ids, prompt_len = trl_tokens(tokenizer, prompt_text, answer_text, full, alone)
    bos = tokenizer.bos_token_id
    if bos is not None and ids[:2] == [bos, bos]:
        raise ChatTemplateError("prompt + answer starts with two BOS tokens: the chat template writes BOS and so "
                                f"does something else (e.g. the text). {fix}")
    if alone[:-1] != full[:len(alone) - 1]:
        raise ChatTemplateError("The prompt's tokens are not a prefix of prompt + answer: the chat template renders "
                                "the prompt differently when an answer follows, so TRL would train on the wrong "
                                f"tokens. Rendered prompt: {prompt_text[-200:]!r}. {fix}")
    content = example[answer][-1]["content"].strip()
    answer_tokens = tokenizer.decode(ids[prompt_len:])
    if content[:50] not in answer_tokens:
        raise ChatTemplateError(f"The answer's text is not in the answer tokens TRL would train on "
                                f"({answer_tokens[:200]!r}). {fix}")
    return ids, prompt_len


def stream_reply(model, tokenizer, messages: list[dict], max_new_tokens: int = 128):
    """Yield the greedy reply to `messages` piece by piece (notebook 05, runner.chat): generate_greedy's text."""
    from transformers import TextIteratorStreamer
    from .scoring import generate_greedy  # the template, BOS, stop tokens and length of notebooks 03 and 05
    streamer, failure = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True), []

    def generate():
        try:
            generate_greedy(model, tokenizer, [messages], max_new_tokens, streamer=streamer)
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread below
            failure.append(err)
            streamer.end()  # unblock the loop below

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    started = False
    for piece in streamer:
        piece = piece if started else piece.lstrip()  # generate_greedy strips the reply too
        started = started or bool(piece)
        if piece:
            yield piece
    thread.join()
    if failure:
        raise failure[0]
