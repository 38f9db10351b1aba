"""Backends run an artifact's graph and own its KV cache and its padding scheme. Each has:
  max_seq_len                                  the longest sequence its cache holds
  prefill(prompts: list[list[int]]) -> [B, vocab] float32   new cache; last-position logits per row
  decode(tokens: np.ndarray [B]) -> [B, vocab] float32      one more token per row
  teacher_forced(ids: list[int]) -> [len, vocab] float32    every position of one sequence
"""
