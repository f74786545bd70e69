"""Tiny in-process fixtures: a byte-level BPE tokenizer trained on the bundled pairs and a random Llama."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch

ASSETS = Path(__file__).resolve().parents[1] / "src" / "dpokit" / "assets"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def bundled_texts(limit: int = 400) -> list[str]:
    with gzip.open(ASSETS / "hh_rlhf_harmless_sample.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(limit), f)]
    return [r["chosen"] for r in rows] + [r["rejected"] for r in rows]


def make_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(bundled_texts(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_model(vocab_size: int, seed: int = 0, hidden: int = 64, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=True, attn_implementation="eager")
    model = LlamaForCausalLM(config)
    model.eval()
    return model


def make_model_dir(path: Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    tokenizer = make_tokenizer()
    model = make_model(len(tokenizer), seed=seed, hidden=hidden, layers=layers)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def make_adapter_dir(base_dir: Path, path: Path) -> Path:
    """A LoRA adapter on the tiny model in `base_dir` whose B matrices are non-zero, so it changes every output."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)  # peft draws the A matrices from the global generator: the same adapter in any test order
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    model.peft_config["default"].base_model_name_or_path = str(base_dir)
    model.save_pretrained(path)
    return path

