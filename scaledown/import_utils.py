"""Availability of optional dependencies, as cached predicates (PEFT style): importing `scaledown` never needs them."""

import importlib.util
from functools import lru_cache


NEURON_INSTALL_HINT = (
    "Training on AWS Trainium needs optimum-neuron 0.4.5 and the AWS Neuron SDK (torch-neuronx, neuronx-cc, "
    "neuronx-distributed), which are published on the Neuron package index, not on PyPI. On a trn1/trn2 instance "
    "(Neuron DLAMI): `pip install 'scaledown[neuron]' --extra-index-url https://pip.repos.neuron.amazonaws.com`. "
    "See the README's Trainium section."
)


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken install
        return False


@lru_cache
def is_gguf_available() -> bool:
    return _has("gguf")


@lru_cache
def is_torch_xla_available() -> bool:
    return _has("torch_xla")


@lru_cache
def is_optimum_neuron_available() -> bool:
    """optimum-neuron *and* what its `NeuronTrainer` imports: torch-xla and neuronx-distributed (Neuron SDK)."""
    return _has("optimum.neuron") and is_torch_xla_available() and _has("neuronx_distributed")
