"""Torch modules and model loading (CLIP, text encoders, captioner, PACL, CTERNet); no Parquet, no Prefect."""
