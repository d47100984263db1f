"""The small-model strategy: what helps a model without tool training (examples, attempts, value from output, grounding)."""
