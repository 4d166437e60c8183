"""The run directory as an object: what a run (or an evaluation) leaves in its folder and how it is read.

layout (the files of a run dir, what a run into one may do, the checkpoint and result folders), locks
(one command a folder at a time), hydra_files (the redacted .hydra copy), guards (the Hydra callbacks that
claim a folder before a job touches it), record (the run record an adapter and its checkpoints carry),
jobs (what a run dir says about its run: settings, summary, failure) and atomic (one atomic write).
Imports stay light (no torch, transformers or peft): Hydra instantiates the guards before an entry
point picks its backend.
"""
