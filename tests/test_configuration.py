import json

import pytest
from transformers import AutoConfig, LlamaConfig

from scaledown import ScaleDownConfig


def test_defaults_follow_the_paper():
    config = ScaleDownConfig()
    assert config.model_type == "scaledown"
    assert config.generator_name_or_path == "mistralai/Mistral-7B-Instruct-v0.2"
    assert (config.compressor_type, config.num_compressor_layers, config.compressor_keep_final_norm) == (
        "n_layers",
        8,
        False,
    )
    assert (config.doc_max_length, config.compression_rate, config.num_memory_tokens) == (128, 16, 8)
    assert config.query_max_length == 64
    assert config.use_lora and config.lora_config == {
        "r": 16, "lora_alpha": 32, "lora_dropout": 0.1, "target_modules": "all-linear"
    }  # fmt: skip
    assert config.enable_reranking is False
    for policy in ("reranking_loss_weight", "learning_rate_generator", "learning_rate_compressor_nlayers"):
        assert not hasattr(config, policy)  # training policy lives in the training arguments only
        assert not hasattr(ScaleDownConfig(**{policy: 0.5}), policy)  # as stored by earlier versions: dropped
    assert config.memory_token == "<MEM>"


def test_encoder_defaults_to_modernbert():
    assert ScaleDownConfig(compressor_type="encoder").compressor_name_or_path == "answerdotai/ModernBERT-base"
    assert ScaleDownConfig(compressor_type="encoder", compressor_name_or_path="x/y").compressor_name_or_path == "x/y"
    assert ScaleDownConfig().compressor_name_or_path is None


@pytest.mark.parametrize(
    "given, expected",
    [
        ({"doc_max_length": 256}, (256, 16, 16)),
        ({"num_memory_tokens": 4}, (64, 16, 4)),
        ({"compression_rate": 32}, (128, 32, 4)),
        ({"doc_max_length": 64, "num_memory_tokens": 16}, (64, 4, 16)),
        ({"doc_max_length": 128, "compression_rate": 16, "num_memory_tokens": 8}, (128, 16, 8)),
    ],
)
def test_compression_triple_is_derived(given, expected):
    config = ScaleDownConfig(**given)
    assert (config.doc_max_length, config.compression_rate, config.num_memory_tokens) == expected


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"doc_max_length": 128, "compression_rate": 16, "num_memory_tokens": 4}, "Inconsistent compression"),
        ({"doc_max_length": 100, "compression_rate": 16}, "doc_max_length"),
        ({"num_memory_tokens": 0}, "num_memory_tokens"),
        ({"compressor_type": "mlp"}, "compressor_type"),
        ({"num_compressor_layers": 0}, "num_compressor_layers"),
        ({"query_max_length": -1}, "query_max_length"),
        ({"lora_r": 0}, "lora_r"),
        ({"lora_dropout": 1.5}, "lora_dropout"),
        ({"lora_alpha": 0}, "lora_alpha"),
        ({"lora_config": {"r": 2.5}}, r"lora_config\['r'\]"),
        ({"lora_config": {"target_modules": 3}}, "target_modules"),
        ({"lora_config": "r16"}, "lora_config"),
        ({"projection_hidden_dim": 0}, "projection_hidden_dim"),
        ({"compressor_memory_token_template": "<MEM>"}, "compressor_memory_token_template"),
        ({"generator_config": {"hidden_size": 4}}, "model_type"),
        ({"generator_config": 3}, "generator_config"),
        ({"num_memory_tokens": 2, "compressor_memory_token_ids": [5, 6, 7]}, "compressor_memory_token_ids"),
    ],
)
def test_bad_values_raise_a_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ScaleDownConfig(**kwargs)


def test_lora_settings_are_one_lora_config_dict(tmp_path):
    """The adapters' settings live in one `peft.LoraConfig`-shaped dict; the loose `lora_*` shorthands (and folders
    saved with them) fill it, a `LoraConfig` itself is accepted, and only the dict is saved."""
    from peft import LoraConfig

    config = ScaleDownConfig(lora_r=8, lora_config={"lora_alpha": 4, "target_modules": ("q_proj", "v_proj")})
    assert config.lora_config == {"r": 8, "lora_alpha": 4, "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["lora_config"] == config.lora_config and not any(k.startswith("lora_r") for k in saved)
    saved.pop("lora_config")
    saved.update(lora_r=4, lora_dropout=0.0)  # a folder of an earlier version
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert ScaleDownConfig.from_pretrained(tmp_path).lora_config["r"] == 4
    from_peft = ScaleDownConfig(lora_config=LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj"]))
    assert from_peft.lora_config["r"] == 2 and from_peft.lora_config["target_modules"] == ["q_proj"]


def test_generator_config_is_stored_and_rebuilt(tmp_path):
    generator = LlamaConfig(hidden_size=32, num_hidden_layers=6, num_attention_heads=4, vocab_size=99)
    config = ScaleDownConfig(generator_config=generator, num_compressor_layers=2)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, ScaleDownConfig)
    rebuilt = loaded.get_generator_config()
    assert isinstance(rebuilt, LlamaConfig)
    assert (rebuilt.hidden_size, rebuilt.num_hidden_layers, rebuilt.vocab_size) == (32, 6, 99)
    compressor = loaded.get_compressor_config()
    assert compressor.num_hidden_layers == 2 and compressor.hidden_size == 32
    assert loaded.to_dict()["num_compressor_layers"] == 2


def test_compressor_deeper_than_generator_is_rejected():
    generator = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    with pytest.raises(ValueError, match="num_compressor_layers"):
        ScaleDownConfig(generator_config=generator, num_compressor_layers=3).get_compressor_config()


def test_missing_sub_configs_raise_a_clear_error():
    with pytest.raises(ValueError, match="generator_config"):
        ScaleDownConfig().get_generator_config()
    with pytest.raises(ValueError, match="compressor_config"):
        ScaleDownConfig(compressor_type="encoder").get_compressor_config()


def test_layer_types_are_cut_with_the_layers():
    from transformers import Qwen2Config

    generator = Qwen2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    if not isinstance(getattr(generator, "layer_types", None), list):
        pytest.skip("this transformers version has no per-layer types")
    compressor = ScaleDownConfig(generator_config=generator, num_compressor_layers=2).get_compressor_config()
    assert len(compressor.layer_types) == 2


def test_sub_configs_are_the_sub_models_own(tmp_path):
    """Real sub-configurations: the generator and compressor share theirs with the wrapper's config, the text config
    is the generator's, and a save holds each in full (with its model type)."""
    from tiny_models import make_scaledown

    for compressor_type in ("n_layers", "encoder"):
        model = make_scaledown("llama", compressor_type)
        config = model.config
        assert set(ScaleDownConfig.sub_configs) == {"generator_config", "compressor_config"}
        assert config.generator_config is model.generator.config is config.get_text_config()
        assert config.get_compressor_config() is model.compressor.config
        model.save_pretrained(tmp_path / compressor_type)
        stored = json.loads((tmp_path / compressor_type / "config.json").read_text())
        assert stored["generator_config"]["model_type"] == "llama"
        assert stored["compressor_config"]["model_type"] == ("llama" if compressor_type == "n_layers" else "bert")
        assert stored["compressor_config"]["num_hidden_layers"] == model.compressor.config.num_hidden_layers
        loaded = ScaleDownConfig.from_pretrained(tmp_path / compressor_type)
        assert isinstance(loaded.generator_config, type(model.generator.config))
        fields = ("hidden_size", "num_hidden_layers", "vocab_size", "tie_word_embeddings")
        for field in fields:
            assert getattr(loaded.generator_config, field) == getattr(model.generator.config, field), field
