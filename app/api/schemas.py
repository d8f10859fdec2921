"""Request and response schemas of the HTTP API (pydantic), documented in the OpenAPI spec.

Results are validated from the pipeline's domain dataclasses (``app.engine.pipeline.ImageResult``) by attribute.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, StrictBool, create_model

from app.contract.preprocess import PreprocessConfig


class V2ErrorResponse(BaseModel):
    """Every error answer under /v2, as the Open Inference Protocol says."""

    error: str = Field(description="What went wrong, in words.", examples=["no model 'x' is served"])


class ErrorResponse(BaseModel):
    """Every error answer: a stable machine-readable code and a human-readable detail."""

    error: str = Field(description="Error code.", examples=["unsupported_image"])
    detail: str = Field(
        description="What went wrong, in words.", examples=["cannot decode image: cannot identify image file"]
    )


class LabelScore(BaseModel):
    """One ranked label of the ensemble."""

    model_config = ConfigDict(from_attributes=True)

    index: int = Field(description="Class index in the model's output.", examples=[3])
    label: str = Field(description="Product id / name from the manifest.", examples=["Dress"])
    score: float = Field(
        description="Mean probability over the members (with TTA: of the crop-averaged logits).", examples=[0.87]
    )
    votes: int = Field(description="Members whose top-1 is this label.", examples=[3])


class MemberTop1(BaseModel):
    """One member's own top-1."""

    model_config = ConfigDict(from_attributes=True)

    name: str = Field(examples=["resnet"])
    version: str = Field(examples=["1"])
    index: int = Field(examples=[3])
    label: str = Field(examples=["Dress"])
    score: float = Field(description="The member's probability for its top-1.", examples=[0.91])


class Timings(BaseModel):
    """Where the time of one image went, in milliseconds."""

    model_config = ConfigDict(from_attributes=True)

    decode_ms: float = Field(description="Decoding and TTA crops, in the decode worker.")
    queue_ms: float = Field(description="From the crops being ready to the start of their batch.")
    inference_ms: float = Field(description="The batch's onnxruntime runs (all members) and ranking.")
    total_ms: float = Field(description="From the request's arrival to this answer being built.")


class Prediction(BaseModel):
    """The ensemble's answer for one image."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "labels": [
                        {"index": 3, "label": "Dress", "score": 0.87, "votes": 3},
                        {"index": 0, "label": "T-shirt/top", "score": 0.06, "votes": 0},
                    ],
                    "members": [
                        {"name": "resnet", "version": "1", "index": 3, "label": "Dress", "score": 0.91},
                        {"name": "senet", "version": "1", "index": 3, "label": "Dress", "score": 0.84},
                        {"name": "resnest", "version": "1", "index": 3, "label": "Dress", "score": 0.86},
                    ],
                    "ensemble": "default",
                    "strategy": "vote",
                    "mode": "top_k",
                    "tta": True,
                    "batch_size": 4,
                    "timings": {"decode_ms": 1.2, "queue_ms": 2.1, "inference_ms": 6.5, "total_ms": 10.4},
                }
            ]
        }
    )

    labels: list[LabelScore] = Field(
        description="Top-k labels, or the average-k label set (mode average_k), best first (votes, then mean probability)."
    )
    members: list[MemberTop1] = Field(description="Each member's top-1, with the member's version.")
    ensemble: str = Field(description="Name of the ensemble in ensemble.json.")
    strategy: str = Field(description="How members were combined: vote or mean.")
    mode: Literal["top_k", "average_k"] = Field(
        description="top_k: the k best labels. average_k: the labels whose mean (calibrated) probability is at or above "
        "the threshold fitted on validation for an average set size of k; a set holds at least the top-1 and its size "
        "varies per image."
    )
    tta: bool = Field(description="Whether multi-crop TTA was used.")
    batch_size: int = Field(description="Images in the dynamic batch this image ran in.")
    timings: Timings


class BatchItem(BaseModel):
    """The outcome of one file of a batch request: a prediction or its own error."""

    index: int = Field(description="Position of the file in the request.")
    filename: str | None = Field(None, description="The file name the client sent.")
    status: int = Field(description="HTTP status this item would have had on its own.", examples=[200, 415])
    prediction: Prediction | None = None
    error: ErrorResponse | None = None


class BatchPrediction(BaseModel):
    """Results of a batch request, in the order of the files."""

    results: list[BatchItem]
    succeeded: int
    failed: int


def fields_of(config: type) -> dict[str, Any]:
    """pydantic field definitions for a dataclass's fields, so a schema follows the contract it shows."""
    hints = get_type_hints(config)
    return {field.name: (hints[field.name], ...) for field in dataclasses.fields(config)}


PreprocessInfo = create_model(
    "PreprocessInfo", __doc__="A member's preprocessing (app.contract.preprocess.PreprocessConfig).", **fields_of(PreprocessConfig)
)


class MemberInfo(PreprocessInfo):
    """One loaded member, as its manifest describes it."""

    name: str
    version: str
    architecture: str
    loss: str
    sha256: str
    providers: list[str] = Field(description="onnxruntime providers the session really uses.")


class ModelsResponse(BaseModel):
    """The ensemble being served."""

    ensemble: str
    strategy: str
    num_classes: int
    labels: list[str]
    default_top_k: int
    tta_default: bool
    members: list[MemberInfo]


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    ready: bool
    members: int = Field(description="Members loaded.")


class RepositoryIndexRequest(BaseModel):
    ready: StrictBool = Field(False, description="Only the models that are ready.")


class RepositoryIndexItem(BaseModel):
    """One model of the repository index (Triton's repository extension)."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    version: str = Field(description="The member version (the ensemble, which has none of its own, is 1).")
    state: str = Field(examples=["READY", "UNAVAILABLE", "LOADING"])
    reason: str = Field("", description="Why the model is not ready (or why the last load failed).")
