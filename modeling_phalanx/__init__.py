"""Phalanx models for Hugging Face Transformers."""
