"""Convert sliding-window-attention checkpoints into Phalanx hybrids, and distill them back."""

# The conversion record a converted model folder carries (source, layers, init); read by export and the model card.
CONVERSION_RECORD = "phalanx_conversion.json"
