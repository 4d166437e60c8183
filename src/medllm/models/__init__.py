"""Model backends: transformers + PEFT (``hf``) and Unsloth (``unsloth``), plus the tiny CPU model."""
