"""Tiny random models and tokenizers built in-process (no hub access) for the unit tests."""

import string

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    BertConfig,
    LlamaConfig,
    MistralConfig,
    ModernBertConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)


CORPUS = [
    "The Eiffel Tower is in Paris, the capital of France.",
    "Paris hosts the Louvre museum and the Seine river.",
    "Berlin is the capital of Germany and lies on the Spree.",
    "The Amazon is the largest rainforest on Earth.",
    "Water boils at 100 degrees Celsius at sea level.",
    "What is the capital of France? Where is the Eiffel Tower? Who wrote Hamlet?",
    "Shakespeare wrote Hamlet around 1600 in London.",
    "Answer the question briefly, using the background documents. Document Question Background",
] * 4

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<s>' + message['role'] + '\n' + message['content'] + '</s>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<s>assistant\n' }}{% endif %}"
)


def make_decoder_tokenizer(chat_template: bool = True) -> PreTrainedTokenizerFast:
    """Byte-level BPE (~320 tokens) with a ChatML-like template, like the Llama/Mistral/Qwen2 tokenizers."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def make_encoder_tokenizer() -> PreTrainedTokenizerFast:
    """Lower-cased WordPiece with BERT's special tokens. Its vocabulary is built here, not trained: the `tokenizers`
    WordPiece trainer breaks ties differently in every process, so the same test would see another tokenizer each run.
    Special tokens, every character of the corpus and of ASCII alone and as a word piece, then the corpus's words (~210
    tokens)."""
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = sorted({w for line in CORPUS for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line))})
    characters = sorted(
        {c for word in words for c in word} | set(string.ascii_lowercase + string.digits + string.punctuation)
    )
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *characters, *[f"##{c}" for c in characters]]
    pieces += [w for w in words if len(w) > 1]
    tok = Tokenizer(models.WordPiece({piece: i for i, piece in enumerate(pieces)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


# Shared by every tiny generator: 4 layers, 32 wide, GQA 4/2 heads.
_DECODER = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    initializer_range=0.3,  # frozen tied embeddings of a 32-wide model need some norm for LoRA to move logits
    bos_token_id=1,
    eos_token_id=2,
)
GENERATOR_CONFIGS = {
    "llama": lambda vocab: LlamaConfig(vocab_size=vocab, tie_word_embeddings=True, **_DECODER),
    "mistral": lambda vocab: MistralConfig(
        vocab_size=vocab, sliding_window=None, tie_word_embeddings=False, **_DECODER
    ),
    "qwen2": lambda vocab: Qwen2Config(vocab_size=vocab, tie_word_embeddings=True, **_DECODER),
}

ENCODER_CONFIGS = {
    "bert": lambda vocab: BertConfig(
        vocab_size=vocab,
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
    ),
    "modernbert": lambda vocab: ModernBertConfig(
        vocab_size=vocab,
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=512,
        global_attn_every_n_layers=1,
        pad_token_id=0,
        cls_token_id=2,
        sep_token_id=3,
        bos_token_id=2,
        eos_token_id=3,
    ),
}


def make_generator(arch: str = "llama", seed: int = 0):
    """A tiny random causal LM and its tokenizer."""
    tokenizer = make_decoder_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(GENERATOR_CONFIGS[arch](len(tokenizer)))
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    return model.eval(), tokenizer


def make_encoder(arch: str = "bert", seed: int = 1):
    """A tiny random encoder (`AutoModel`) and its tokenizer."""
    tokenizer = make_encoder_tokenizer()
    torch.manual_seed(seed)
    return AutoModel.from_config(ENCODER_CONFIGS[arch](len(tokenizer))).eval(), tokenizer


def make_scaledown(arch: str = "llama", compressor_type: str = "n_layers", encoder: str = "bert", **kwargs):
    """A tiny ScaleDownForCausalLM (2 compressor layers, 32 tokens -> 4 memory embeddings by default)."""
    from scaledown import ScaleDownForCausalLM

    generator, tokenizer = make_generator(arch)
    kwargs.setdefault("doc_max_length", 32)
    kwargs.setdefault("num_memory_tokens", 4)
    kwargs.setdefault("num_compressor_layers", 2)
    kwargs.setdefault("query_max_length", 16)
    if compressor_type == "encoder":
        compressor, compressor_tokenizer = make_encoder(encoder)
        kwargs.update(compressor=compressor, compressor_tokenizer=compressor_tokenizer)
    elif compressor_type == "llm":
        compressor_lm, compressor_tokenizer = make_generator("qwen2", seed=2)
        kwargs.update(compressor=compressor_lm.model, compressor_tokenizer=compressor_tokenizer)
    torch.manual_seed(3)
    return ScaleDownForCausalLM.from_generator(
        generator, tokenizer, compressor_type=compressor_type, generator_name_or_path=f"tiny-{arch}", **kwargs
    )
