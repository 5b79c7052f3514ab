"""Dataset room: image ingest, crops and buckets, caption files and tag editing."""
