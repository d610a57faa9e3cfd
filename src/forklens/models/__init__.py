"""Model classes forklens adds to Hugging Face: registered with ``AutoConfig`` / ``AutoModelForCausalLM`` on
import, so their checkpoints load with ``from_pretrained`` like any other."""

from forklens.models.recurrent import RecurrentLMConfig, RecurrentLMForCausalLM

__all__ = ["RecurrentLMConfig", "RecurrentLMForCausalLM"]
