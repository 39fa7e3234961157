"""Sharing a checkpoint: its model card (`card.py`, `card_sections.py`), allocation chart (`chart.py`), reproduce
command (`reproduce.py`), names and numbers (`labels.py`), and the Hub upload (`upload.py`)."""
