"""Exports to where users deploy pruned models: GGUF files for llama.cpp (`gguf.py`) and their vocabulary (`vocab.py`)."""
