"""Phalanx models for Hugging Face Transformers.

Importing this package registers `PhalanxConfig` with AutoConfig and the models with AutoModel and
AutoModelForCausalLM, and marks them for `auto_map` so `save_pretrained` writes a Hub-ready folder.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_phalanx import PhalanxConfig
from .modeling_phalanx import (
    PHALANX_LORA_TARGET_MODULES,
    PhalanxCache,
    PhalanxForCausalLM,
    PhalanxModel,
    PhalanxPreTrainedModel,
    PhalanxStaticCache,
)

AutoConfig.register(PhalanxConfig.model_type, PhalanxConfig, exist_ok=True)
AutoModel.register(PhalanxConfig, PhalanxModel, exist_ok=True)
AutoModelForCausalLM.register(PhalanxConfig, PhalanxForCausalLM, exist_ok=True)
PhalanxConfig.register_for_auto_class()
PhalanxModel.register_for_auto_class("AutoModel")
PhalanxForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "PHALANX_LORA_TARGET_MODULES",
    "PhalanxCache",
    "PhalanxConfig",
    "PhalanxForCausalLM",
    "PhalanxModel",
    "PhalanxPreTrainedModel",
    "PhalanxStaticCache",
]
