"""The engine: onnxruntime sessions, the ensemble, decode workers, the dynamic batcher and the one pipeline (no HTTP)."""
