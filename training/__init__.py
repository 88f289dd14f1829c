"""Pretraining and fine-tuning with the Transformers Trainer."""
