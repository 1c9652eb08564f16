"""The core: plain Python, no Prefect. One package per stage of the pipeline, in its order:
storage (objects and the catalog), ingest, score (models and strategies), label (batches
out, labels in), train (retrain, promotion, monitoring)."""
