"""Convert sliding-window-attention checkpoints into Phalanx hybrids, and distill them back."""
