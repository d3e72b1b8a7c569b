"""Training with Hugging Face Accelerate: `python -m gen_nvs.train --config FILE [k=v ...]`.

Modules: `config` (defaults -> experiment file -> overrides), `data` (datasets, mixture,
seeded batch order), `objectives` (per-stage forward pass and losses), `ema`,
`checkpoints` (resumable states) and `loop` (the training loop and command line).
"""
