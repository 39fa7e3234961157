"""Data: calibration texts and batches (`calibration`), self-generated traces (`self_generated`), the shared prompts
(`prompts`) and the one generation loop (`generation`) used by evaluation and self-generated calibration."""
