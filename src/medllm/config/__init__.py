"""Configuration: the schema (every key, default and rule), the checks run before anything heavy is
imported, the resolvers the YAML files use, and composing conf/ where no Hydra app runs.

The bottom layer of medllm: it imports no other package of it (``medllm.errors`` aside), and stays light
(OmegaConf and Hydra; torch only where a check needs the GPU). Importing it registers the ``${medllm.*}``
resolvers, once, so every composition (train.py, eval.py, a test, a SLURM worker unpickling a callback)
can resolve them.
"""

from medllm.config.resolvers import register as _register_resolvers

_register_resolvers()
