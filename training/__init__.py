"""Pretraining and fine-tuning with the Transformers Trainer.

- :mod:`.presets`: named ``PhalanxConfig`` presets (tiny to ~1.3B; transformer / swa / phalanx flavours).
- :mod:`.swax`: SWAX stochastic sliding windows as a ``TrainerCallback``.
- :mod:`.callbacks`: loss-curve PNG; per-process peak memory on request (``PHALANX_LOG_PEAK_MEMORY=1``).
- :mod:`.cli` (``phalanx train``), :mod:`.finetune_cli` (``phalanx finetune``), :mod:`.options` (shared options).
- :mod:`.data`: every input form of ``--data``, the shipped sample and held-out split, tokenization, and packing
  into fixed-length rows whose ``position_ids`` restart per sequence.
- :mod:`.tokenizer`: the byte tokenizer.
- :mod:`.folders`: the one output writer every command uses (never over an input, atomic, claimed);
  :mod:`.checks`: finite weights, checked wherever weights are loaded.
"""
