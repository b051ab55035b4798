"""The model layer: the compact Llama forward, its static GQA KV cache, the measured kernel choice,
graph-ready steps and the loader. It imports only the core (errors, config constants)."""
