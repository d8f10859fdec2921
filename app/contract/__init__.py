"""The contract between training and serving: the model repository, preprocessing and ranking (no torch, no HTTP)."""
