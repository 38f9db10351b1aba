"""Backends run an artifact's graph and own its KV cache. Each has:
  start(batch)                                   reset the cache for a new batch
  forward(input_ids, position_ids, attention_mask) -> logits [B, S, vocab] float32
    (attention_mask covers the cache plus the new tokens; padding on the left)
"""
