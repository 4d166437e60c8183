"""Models: the backends that load them (``backends``: tiny, hf, unsloth), LoRA, the tiny model, exports."""
