"""What runs wherever a model runs (the router, or a worker process): model base classes, artifacts,
declarations, and the one way to call a loaded model. Nothing here imports gRPC or the engine."""
