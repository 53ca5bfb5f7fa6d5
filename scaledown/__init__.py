"""ScaleDown: Hugging Face-native OSCAR (online soft compression and reranking) for fast RAG."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor

from .configuration_scaledown import ScaleDownConfig
from .hub_cards import push_folder as _push_folder
from .hub_cards import write_model_card as _write_model_card
from .modeling_scaledown import (
    CompressedDocuments,
    ScaleDownCausalLMOutput,
    ScaleDownCompressorOutput,
    ScaleDownForCausalLM,
    ScaleDownPreTrainedModel,
)
from .processing_scaledown import (
    ScaleDownProcessor,
    build_compressor_inputs,
    build_generator_inputs,
    build_generator_prompt,
    memory_segments,
    raw_document_segments,
)


__version__ = "0.1.0"

ScaleDownForCausalLM.model_card_writer = staticmethod(_write_model_card)
ScaleDownForCausalLM.folder_pusher = staticmethod(_push_folder)

AutoConfig.register(ScaleDownConfig.model_type, ScaleDownConfig, exist_ok=True)
AutoModel.register(ScaleDownConfig, ScaleDownForCausalLM, exist_ok=True)
AutoModelForCausalLM.register(ScaleDownConfig, ScaleDownForCausalLM, exist_ok=True)
AutoProcessor.register(ScaleDownConfig, ScaleDownProcessor, exist_ok=True)

__all__ = [
    "CompressedDocuments",
    "ScaleDownCausalLMOutput",
    "ScaleDownCompressorOutput",
    "ScaleDownConfig",
    "ScaleDownForCausalLM",
    "ScaleDownPreTrainedModel",
    "ScaleDownProcessor",
    "build_compressor_inputs",
    "build_generator_inputs",
    "build_generator_prompt",
    "memory_segments",
    "raw_document_segments",
]
