"""Chat with a tuned run: one answer (--message) or a conversation in the terminal, streamed as it is generated.

    python -m runner.chat tiny-demo --message "Which is the largest of 3 9 4?"
    python -m runner.chat tiny-demo                 # a conversation: /new starts over, an empty line or Ctrl-D ends

The run's base model is loaded in 4 bits with its adapter exactly as notebook 05 loads them (quantization_config.json,
environment.json's precision, the offline default resolved by name, the tokenizer saved with adapter/), and replies
are greedy, through the same `helpers.scoring.generate_greedy` as notebooks 03 and 05: the chat template with its
generation prompt, BOS as in training, stop at EOS or the template's end-of-turn token (helpers.chat.template_facts),
at most --max-new-tokens (default: the run's max_new_tokens). So a held-out prompt gets the answer 05 generated.
Status lines go to stderr, replies to stdout.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from helpers.chat import stream_reply  # the notebooks' chat (notebook 05, section 6)


def load_tuned(run_name: str):
    """(model, tokenizer, cfg) of a run whose notebook 04 finished: the base model in 4 bits + adapter/, as notebook
    05's first cells load them (without taking the run's lock: chatting writes nothing)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from helpers.hub import hub_errors_explained
    from helpers.modeling import device_map_for
    from helpers.profiles import RunConfig, resolve_config
    from helpers.rundir import RunDir, outputs_root, read_json
    from offline_default import resolve

    run = RunDir(outputs_root() / run_name)
    if not run.params.exists():
        raise FileNotFoundError(f"No run {run_name!r} in {outputs_root()}. Fix: pass the name of a run whose notebook "
                                "04 finished (a folder under outputs/), or train one with `python -m runner`.")
    stored = read_json(run.params)
    known = {f.name for f in fields(RunConfig)} - {"profile"}
    cfg = resolve_config(stored["profile"], {k: v for k, v in stored.items() if k in known})
    precision = read_json(run.require(run.environment, "notebook 01"))["precision"]
    tokenizer = AutoTokenizer.from_pretrained(run.require(run.adapter, "notebook 04"))
    bnb_config = BitsAndBytesConfig.from_dict(read_json(run.require(run.root / "quantization_config.json",
                                                                    "notebook 03")))
    with hub_errors_explained(cfg.model_id):
        base = AutoModelForCausalLM.from_pretrained(
            resolve(cfg.model_id, seed=cfg.seed), quantization_config=bnb_config,
            dtype=getattr(torch, precision["torch_dtype"]), attn_implementation=precision["attn_implementation"],
            device_map=device_map_for(precision), trust_remote_code=cfg.trust_remote_code)
    model = PeftModel.from_pretrained(base, str(run.adapter))
    model.eval()
    if cfg.use_liger_kernel and precision["device"] == "cuda":  # the fused kernels notebooks 04 and 05 use
        from engine.kernels import apply_liger_kernels
        apply_liger_kernels(base, rope=True, rms_norm=True, swiglu=True)
    return model, tokenizer, cfg


def _fit(model, tokenizer, history: list[dict], max_new_tokens: int) -> list[dict]:
    """The latest turns of the conversation whose prompt leaves room for the reply in the model's context."""
    limit = min(tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", None) or 10**9)
    while len(history) > 1:
        text = tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=False)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) + max_new_tokens <= limit:
            break
        history = history[2:]  # the oldest user turn and its reply
    return history


def _say(model, tokenizer, messages: list[dict], max_new_tokens: int) -> str:
    pieces = []
    for piece in stream_reply(model, tokenizer, messages, max_new_tokens):
        print(piece, end="", flush=True)
        pieces.append(piece)
    print(flush=True)
    return "".join(pieces).strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.chat", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_name", help="a run under outputs/ whose notebook 04 finished")
    parser.add_argument("--message", help="answer this one message and exit (default: a conversation)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="longest reply in tokens (default: the run's max_new_tokens)")
    args = parser.parse_args(argv)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be >= 1")
    print(f"Loading run {args.run_name!r} ...", file=sys.stderr, flush=True)
    try:
        model, tokenizer, cfg = load_tuned(args.run_name)
    except (FileNotFoundError, ValueError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    max_new_tokens = args.max_new_tokens or cfg.max_new_tokens
    if args.message is not None:
        _say(model, tokenizer, [{"role": "user", "content": args.message}], max_new_tokens)
        return 0
    print(f"{cfg.model_id} + the adapter of {args.run_name!r}, greedy, at most {max_new_tokens} new tokens. "
          "/new starts a new conversation (the offline default learned one-turn prompts only); an empty line or "
          "Ctrl-D ends.", file=sys.stderr)
    history = []
    while True:
        try:
            text = input("you> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if not text.strip():
            return 0
        if text.strip() == "/new":
            history = []
            continue
        history = _fit(model, tokenizer, [*history, {"role": "user", "content": text}], max_new_tokens)
        print("model> ", end="", flush=True)
        history.append({"role": "assistant", "content": _say(model, tokenizer, history, max_new_tokens)})


if __name__ == "__main__":
    sys.exit(main())
