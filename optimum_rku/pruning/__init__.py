"""Pruning: `allocation` turns scores into a `PruningPlan` (what every layer keeps); `removal` slices the model to it."""
