"""The chat template the series uses (notebook 02 shows it, the offline default is pretrained on it).

Mistral-7B-v0.1 is a *base* model: its tokenizer ships no chat template, so we set one explicitly.
It uses only plain text plus the tokenizer's existing BOS/EOS, so QLoRA never has to resize embeddings.
"""

# Written with explicit {{ '\n' }} pieces: Jinja chat templates run with trim_blocks, which eats a
# literal newline that follows a {% ... %} tag. EOS comes right after the assistant's text (no
# trailing newline), so TRL's "append EOS unless the last token is EOS" never doubles it.
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
