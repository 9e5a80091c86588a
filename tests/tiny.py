"""Tiny random models and a tokenizer built in-process: no network, no files."""

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<pad>", "<s>", "<|im_end|>", "<|im_start|>"]


def tiny_tokenizer():
    """Byte-level tokenizer (256 bytes + specials) with a ChatML template."""
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(byte_chars):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(seed=0, layers=2, hidden=32, intermediate=48, vocab=None):
    torch.manual_seed(seed)
    vocab = vocab or len(tiny_tokenizer())
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return AutoModelForCausalLM.from_config(config).eval()


def save_tiny_llama(folder, seed=0):
    """tiny_llama and tiny_tokenizer saved as a model folder (for `prag build --model`); returns it."""
    tiny_llama(seed=seed).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _common(vocab, hidden, intermediate, layers):
    return dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def _tiny_configs(vocab, hidden, intermediate, layers):
    """model_type -> tiny config of each architecture the injection layer supports."""
    import transformers as tf

    c = _common(vocab, hidden, intermediate, layers)
    head = dict(head_dim=hidden // 4)
    sliding = dict(sliding_window=8)  # smaller than the test prompts, so the sliding layers really slide
    return {
        "llama": lambda: tf.LlamaConfig(**c),
        "mistral": lambda: tf.MistralConfig(**c, **sliding),
        "qwen2": lambda: tf.Qwen2Config(**c),
        "qwen3": lambda: tf.Qwen3Config(**c, **head),
        "gemma": lambda: tf.GemmaConfig(**c, **head),
        "gemma2": lambda: tf.Gemma2Config(**c, **head, **sliding),
        "gemma3_text": lambda: tf.Gemma3TextConfig(**c, **head, **sliding),
        "gemma3": lambda: tf.Gemma3Config(  # the multimodal wrapper AutoModelForCausalLM gives for Gemma 3 >= 4B
            text_config=dict(**c, **head, **sliding),
            mm_tokens_per_image=4,
            image_token_index=vocab - 1,
            boi_token_index=vocab - 3,
            eoi_token_index=vocab - 2,
            vision_config=dict(
                hidden_size=16,
                intermediate_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=28,
                patch_size=14,
            ),
        ),
        "olmo2": lambda: tf.Olmo2Config(**c),
        "granite": lambda: tf.GraniteConfig(
            **c,
            mlp_bias=True,
            embedding_multiplier=2.0,
            residual_multiplier=0.5,
            logits_scaling=4.0,
            attention_multiplier=0.3,
        ),
        "phi3": lambda: tf.Phi3Config(**c),
        "gpt2": lambda: tf.GPT2Config(
            vocab_size=vocab,
            n_embd=hidden,
            n_inner=intermediate,
            n_layer=layers,
            n_head=4,
            n_positions=512,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
    }


TINY_ARCHS = tuple(_tiny_configs(8, 8, 8, 1))


def tiny_model(model_type="llama", seed=0, layers=2, hidden=32, intermediate=48, vocab=None):
    """A tiny random causal LM of the given architecture (a key of TINY_ARCHS), fp32, eval mode."""
    torch.manual_seed(seed)
    vocab = vocab or len(tiny_tokenizer())
    config = _tiny_configs(vocab, hidden, intermediate, layers)[model_type]()
    return AutoModelForCausalLM.from_config(config).eval()


def random_doc_params(model, n=1, seed=0, rank=2, alpha=16.0, targets=None, std=0.02):
    """n documents with random non-zero A and B (not trainable) for `model`; DocParams.init gives A = 0."""
    from prag_core.pairs.doc_params import DocParams

    gen = torch.Generator().manual_seed(seed)
    docs = []
    for _ in range(n):
        doc = DocParams.init(model, rank, alpha, targets=targets)
        for path, (a, b) in doc.pairs.items():
            doc.pairs[path] = (torch.randn(a.shape, generator=gen) * std, torch.randn(b.shape, generator=gen) * std)
        docs.append(doc)
    return docs


def tiny_embedder(folder, words=(), seed=0, hidden=16):
    """A tiny random BERT saved as a sentence-transformers folder (mean pooling, unit vectors); returns it.
    Its vocabulary: letters and digits, and `words` as whole tokens (so texts of different words differ)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models
    from tokenizers import normalizers, processors
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    tokens = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *chars,
        *("##" + c for c in chars),
        *sorted(set(words) - set(chars)),
    ]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        initializer_range=0.5,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    transformer = st_models.Transformer(str(folder), max_seq_length=64)
    SentenceTransformer(modules=[transformer, st_models.Pooling(hidden, "mean"), st_models.Normalize()]).save(
        str(folder)
    )
    return folder
