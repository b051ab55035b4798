"""The embedded reference engine: a compact PyTorch Llama forward with a static GQA KV cache."""
