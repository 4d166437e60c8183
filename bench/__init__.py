"""GPU benchmarks that compare this project's training with raw Unsloth and transformers + PEFT."""
