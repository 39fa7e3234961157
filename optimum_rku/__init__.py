"""optimum-rku: structured pruning of reasoning LLMs with Relative Kinetic Utility (RKU)."""

__version__ = "0.1.0"
