"""Thin runners around pipelines.tfx_pipeline.create_pipeline (LocalDagRunner lives in the CLI)."""
