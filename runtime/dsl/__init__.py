"""The graph DSL (MLRun's names): graphs, steps, model runners, events. Building a graph imports no gRPC."""
