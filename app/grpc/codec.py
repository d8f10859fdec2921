"""KServe v2 gRPC messages <-> the transport-free request and response of ``app.protocol``."""

from __future__ import annotations

from typing import Any, Mapping

from app.grpc import grpc_predict_v2_pb2 as pb
from app.protocol.models import ModelMetadata
from app.protocol.tensors import (
    InferRequest,
    InferResponse,
    Parameters,
    ProtocolError,
    RequestedOutput,
    Tensor,
    tensor_from_raw,
    tensor_from_values,
    tensor_to_raw,
)

# Which InferTensorContents field carries each datatype (FP16 has none: raw contents only).
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameters_from_pb(parameters: Mapping[str, pb.InferParameter]) -> Parameters:
    values: Parameters = {}
    for name, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            values[name] = getattr(parameter, choice)
    return values


def _parameter_pb(value: Any) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    return pb.InferParameter(string_param=str(value))


def _from_contents(tensor: pb.ModelInferRequest.InferInputTensor, parameters: Parameters) -> Tensor:
    field = _CONTENTS.get(tensor.datatype)
    if field is None:
        raise ProtocolError(f"input {tensor.name!r}: {tensor.datatype!r} data must be sent as raw_input_contents")
    values = list(getattr(tensor.contents, field))
    return tensor_from_values(tensor.name, tensor.datatype, list(tensor.shape), values, parameters)


def request_from_pb(message: pb.ModelInferRequest) -> InferRequest:
    """The request; inputs from ``raw_input_contents`` (one per input, in order) or each input's ``contents``."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise ProtocolError(f"{len(raw)} raw_input_contents for {len(message.inputs)} inputs")
    if not message.inputs:
        raise ProtocolError("the inference request has no inputs")
    inputs = []
    for position, tensor in enumerate(message.inputs):
        parameters = parameters_from_pb(tensor.parameters)
        if raw:
            inputs.append(tensor_from_raw(tensor.name, tensor.datatype, list(tensor.shape), raw[position], parameters))
        else:
            inputs.append(_from_contents(tensor, parameters))
    outputs = [RequestedOutput(output.name, parameters_from_pb(output.parameters)) for output in message.outputs]
    return InferRequest(inputs, outputs or None, message.id, parameters_from_pb(message.parameters))


def response_to_pb(response: InferResponse) -> pb.ModelInferResponse:
    """The response with every output's data in ``raw_output_contents`` (what tritonclient reads first)."""
    message = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version, id=response.id)
    for name, value in response.parameters.items():
        message.parameters[name].CopyFrom(_parameter_pb(value))
    for tensor in response.outputs:
        output = message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        for name, value in tensor.parameters.items():
            output.parameters[name].CopyFrom(_parameter_pb(value))
        message.raw_output_contents.append(tensor_to_raw(tensor))
    return message


def metadata_to_pb(metadata: ModelMetadata) -> pb.ModelMetadataResponse:
    def tensors(specs):
        return [pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape) for s in specs]

    return pb.ModelMetadataResponse(
        name=metadata.name,
        versions=metadata.versions,
        platform=metadata.platform,
        inputs=tensors(metadata.inputs),
        outputs=tensors(metadata.outputs),
    )
