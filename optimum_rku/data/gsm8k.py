"""GSM8K as data: its Hub id, config and splits, in one place (calibration, recovery and evaluation defaults)."""

from __future__ import annotations

GSM8K_HUB_ID = "openai/gsm8k"
GSM8K_CONFIG = "main"
GSM8K_SPLITS: tuple[str, ...] = ("train", "test")


def hub_config(dataset_id: str | None, data_files=None) -> str | None:
    """The config a Hub dataset is loaded with by default: GSM8K's "main", nothing for other datasets or local files."""
    return GSM8K_CONFIG if dataset_id == GSM8K_HUB_ID and not data_files else None
