"""Generation: the compiled slot-refill decoder, transformers' generate, and the engines that run a base and
its adapters for evaluation (and, next, the rollouts of reinforcement learning)."""
