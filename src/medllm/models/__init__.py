"""Models: the backends that load them (``backends``: tiny, hf, unsloth), LoRA, the memory plan of
gradient checkpointing, the tiny model, exports, and a causal LM's loss on held-out rows."""
