"""medllm: fine-tune DeepSeek-R1-Distill-Llama-8B on medical reasoning data with LoRA / QLoRA."""

__version__ = "0.1.0"
