"""Models: the architecture table and block views (`architectures`), widths and parameter costs (`geometry`), and the
self-contained classes of per-layer-width checkpoints (`modeling_rku`, copied into such checkpoints)."""
