"""The config's schema (what every key of train.yaml and eval.yaml may hold) and its validation."""
