"""Data: sources (what the samples are), the global sample order, and the pipelines that turn them into Batches."""
