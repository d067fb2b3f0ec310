"""The job service: `mentor server` (FastAPI), its database, queue, executors and model registry."""
