"""A tiny causal LM built locally, for tests, benchmarks and the demo (nothing is downloaded).

`build_tiny_model` trains a byte-level BPE tokenizer on a small corpus with ``tokenizers``,
wraps it with a chat template (with ``{% generation %}`` markers, so assistant-only loss works)
and saves it next to a randomly initialised 2-layer Llama (hidden size 64). The folder loads
with ``AutoTokenizer``/``AutoModelForCausalLM.from_pretrained`` like any hub model and a LoRA
SFT run of a few steps takes about a second on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = ("<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>")
PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|end|>"

# Each message is "<|role|>\n{content}<|end|>\n"; the assistant's content and its end token are
# inside {% generation %} so they form the assistant mask (the model learns to stop).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

_CORPUS = (
    "system user assistant You are a helpful coding assistant.",
    "How do I fix a failing test? Run the test, read the traceback, fix the code, rerun.",
    "Use a retry with exponential backoff when the HTTP request times out.",
    "def main(): return 0  # python function class import from for while if else",
    "pytest ruff mypy git commit branch merge rebase docker kafka topic partition offset",
    "query answer pattern skill step prerequisite tag example error fix cache vector",
    "0 1 2 3 4 5 6 7 8 9 { } [ ] ( ) : ; , . ' \" = + - * / < > _ # @ ! ? | \\ ~ ` $ % ^ &",
)


def build_tiny_model(
    path: str | Path,
    *,
    corpus: Iterable[str] = (),
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Build and save a tiny Llama with its own tokenizer under ``path``; returns the folder.

    ``corpus`` adds text to the tokenizer's training corpus (e.g. the dataset's messages) so
    its words become single tokens. The result is deterministic for the same arguments.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*_CORPUS, *corpus], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
    )
    tokenizer.save_pretrained(out)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    return out
