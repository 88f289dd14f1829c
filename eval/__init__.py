"""Offline lm-eval tasks and the `phalanx eval` runner."""
