"""The Hugging Face transformers population of the coverage benchmark: 13 architectures built
from tiny random configs (no download), each with a seeded input of the shape it takes.

Language models get token ids (sequence classification for the encoders, causal LM for the
decoders, with ``use_cache=False`` so that a forward leaves nothing behind); T5 and Whisper
take decoder token ids as their third positional input; the vision models take 32-pixel
images. Every model has 2 blocks (layers, or stages) and an MLP hidden size of twice its width.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TRANSFORMERS_MODELS", "build"]

TRANSFORMERS_MODELS: tuple[str, ...] = (
    "bert", "distilbert", "roberta", "gpt2", "llama", "qwen2", "mistral", "vit", "convnext",
    "swin", "resnet", "t5", "whisper",
)

_VOCAB, _TOKENS, _SIDE = 64, 8, 32
_TEXT = {"num_labels": 10}
_DECODER = {"vocab_size": _VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "use_cache": False,
            "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}


def _configs():
    import transformers as t

    return {
        "bert": (t.BertForSequenceClassification, t.BertConfig(
            vocab_size=_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, **_TEXT)),
        "distilbert": (t.DistilBertForSequenceClassification, t.DistilBertConfig(
            vocab_size=_VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, **_TEXT)),
        "roberta": (t.RobertaForSequenceClassification, t.RobertaConfig(
            vocab_size=_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, pad_token_id=1, **_TEXT)),
        "gpt2": (t.GPT2LMHeadModel, t.GPT2Config(
            vocab_size=_VOCAB, n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=32,
            use_cache=False, bos_token_id=0, eos_token_id=0)),
        "llama": (t.LlamaForCausalLM, t.LlamaConfig(**_DECODER)),
        "qwen2": (t.Qwen2ForCausalLM, t.Qwen2Config(**_DECODER)),
        "mistral": (t.MistralForCausalLM, t.MistralConfig(**_DECODER)),
        "vit": (t.ViTForImageClassification, t.ViTConfig(
            image_size=_SIDE, patch_size=8, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=64, num_labels=10)),
        "convnext": (t.ConvNextForImageClassification, t.ConvNextConfig(
            num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10)),
        "swin": (t.SwinForImageClassification, t.SwinConfig(
            image_size=_SIDE, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
            window_size=4, num_labels=10)),
        "resnet": (t.ResNetForImageClassification, t.ResNetConfig(
            embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=10)),
        "t5": (t.T5ForConditionalGeneration, t.T5Config(
            vocab_size=_VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            decoder_start_token_id=0, use_cache=False)),
        "whisper": (t.WhisperForConditionalGeneration, t.WhisperConfig(
            vocab_size=_VOCAB, num_mel_bins=16, d_model=32, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
            decoder_ffn_dim=64, max_source_positions=16, max_target_positions=16, use_cache=False,
            pad_token_id=0, bos_token_id=0, eos_token_id=0, decoder_start_token_id=0)),
    }


def build(name: str, batch: int, seed: int) -> tuple[nn.Module, torch.Tensor | tuple[torch.Tensor, ...], dict]:
    """Model ``name`` with random weights in eval mode, a seeded input (a tensor, or positional
    tensors), and the config's non-default values."""
    model_class, config = _configs()[name]
    torch.manual_seed(seed)
    model = model_class(config).eval()
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, _VOCAB, (batch, _TOKENS), generator=generator)
    if name in ("vit", "convnext", "swin", "resnet"):
        x: torch.Tensor | tuple[torch.Tensor, ...] = torch.randn(batch, 3, _SIDE, _SIDE, generator=generator)
    elif name == "t5":
        x = (tokens, torch.ones_like(tokens), tokens[:, :4])
    elif name == "whisper":  # 2 * max_source_positions frames of mel features
        features = torch.randn(batch, 16, 32, generator=generator)
        x = (features, torch.ones(batch, 32, dtype=torch.long), tokens[:, :4])
    else:
        x = tokens
    return model, x, {"class": model_class.__name__, **config.to_diff_dict()}
