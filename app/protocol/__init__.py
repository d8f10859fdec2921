"""The Open Inference Protocol (KServe v2) without a transport: tensors, models, statistics.

``tensors`` decodes and encodes tensor data (raw little-endian bytes, length-prefixed BYTES, JSON);
``rest`` is the HTTP body codec (JSON plus Triton's binary tensor data extension); ``models`` maps the
loaded pipeline onto v2 models (the ensemble and each member) with their metadata, Triton-style config
and inference, including the classification extension. The HTTP routes (``app.api.routes.v2``) and the
gRPC servicer (``app.grpc``) are thin layers over these.
"""
