"""Models: the architecture spec registry (`specs`), block views over it (`blocks`), widths and parameter costs
(`geometry`), and the self-contained classes of per-layer-width checkpoints (`modeling_rku`, copied into them)."""
