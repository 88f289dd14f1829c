"""Triton kernels for the sliding window recurrence (SWR) and the fused Phalanx core."""
