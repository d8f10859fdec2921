"""The KServe v2 gRPC front end (``inference.GRPCInferenceService``), on ``grpc_port`` when it is set.

``grpc_predict_v2.proto`` is vendored from KServe (Apache-2.0); ``scripts/generate_grpc.sh`` made the
``grpc_predict_v2_pb2*`` modules. They register the ``inference`` package in protobuf's default pool, as
tritonclient.grpc's own modules do, so the two cannot be imported into one process: ``app.main`` imports
this package only when the gRPC server starts.
"""
