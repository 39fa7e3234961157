"""Exporters: pruned checkpoints to the formats other runtimes load (GGUF for llama.cpp and Ollama)."""

from optimum_rku.exporters.gguf import GGUF_DTYPES, GGUFPlan, export_gguf, plan_gguf_export

__all__ = ["GGUF_DTYPES", "GGUFPlan", "export_gguf", "plan_gguf_export"]
