"""Tokenization: raw behavior logs -> the sequence dataset (Parquet + vocab + manifest)."""
