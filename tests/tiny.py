"""A tiny random Llama and a byte-level BPE tokenizer with a ChatML template, built in-process.

Nothing is downloaded: the tokenizer is trained on a few sentences, the weights are random.
"""

from pathlib import Path

CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
          "{{ message['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = [
    "No, that is a common myth; here is what the evidence says and what you can do instead.",
    "I hear how worried you are. Let's look at this together, step by step.",
    "Honey is not safe for babies under one year old because of botulism spores.",
    "You are right, it is fine, go ahead and do it however you like.",
    "Please consult a professional. I cannot help with that request.",
    "Here are three concrete options, with what each costs and how to start today.",
]


def make_tokenizer(vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", bos_token="<|im_start|>")
    fast.chat_template = CHATML
    return fast


def make_tiny_model_dir(folder: Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A saved tiny Llama (safetensors) plus tokenizer; returns the folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tokenizer = make_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                         intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=False,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder

# A Llama-3-style template: a system block that is always there (with a date line, as Llama
# 3.1's), header tokens around each role, an end-of-turn marker, content trimmed
LLAMA3 = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
          "Cutting Knowledge Date: December 2023\n\n"
          "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] | trim }}"
          "{% endif %}<|eot_id|>"
          "{% for message in messages %}{% if message['role'] != 'system' %}"
          "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
          "{{ message['content'] | trim }}<|eot_id|>{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
          "{% endif %}")
