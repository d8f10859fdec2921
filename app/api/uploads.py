"""Reading images from requests with the size limits enforced while the body streams in.

A single image comes as multipart (field ``file``) or as the raw body with an
``image/*`` (or ``application/octet-stream``) content type; a batch comes as
multipart with repeated ``files`` fields. Nothing past the limit is kept: the
declared Content-Length is checked first and the streamed bytes are counted. The
rest of a refused body is read and dropped by ``app.api.linger`` before the 413
goes out, so that a client still sending receives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from app.api.deps import current_pipeline
from app.api.errors import ApiError
from app.api.options import check_form_options, option_maxima
from app.core.config import Settings

MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and small fields around one file
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 16
RAW_BODY_TYPES = ("image/", "application/octet-stream")


@dataclass(frozen=True)
class Upload:
    """One uploaded image: its bytes, or the error that refused it (batch items only)."""

    filename: str | None
    data: bytes = b""
    error: ApiError | None = None


def _too_large(what: str, limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"{what} exceeds the limit of {limit} bytes")


async def _body_stream(request: Request, limit: int, what: str) -> AsyncIterator[bytes]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(what, limit)
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _too_large(what, limit)
        yield chunk


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The whole body, refused with 413 as soon as it exceeds ``limit`` bytes."""
    return b"".join([chunk async for chunk in _body_stream(request, limit, what)])


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _parse_multipart(request: Request, limit: int, max_files: int, too_many: str) -> FormData:
    parser = MultiPartParser(
        request.headers,
        _body_stream(request, limit, "the request body"),
        max_files=max_files,
        max_fields=MAX_FIELDS,
        max_part_size=MAX_FIELD_BYTES,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if str(exc).startswith("Too many files"):
            raise ApiError(413, "too_many_items", too_many) from exc
        raise ApiError(400, "bad_request", f"malformed multipart body: {exc}") from exc
    try:
        check_form_options(form, option_maxima(current_pipeline(request.app)))
    except ApiError:
        await form.close()
        raise
    return form


def _file_part(value: UploadFile | str, field: str) -> UploadFile:
    """The part as a file; a text part where a file belongs makes the whole request malformed (422)."""
    if not isinstance(value, UploadFile):
        raise ApiError(422, "invalid_request", f"'{field}' must be a file part (curl -F {field}=@photo.jpg)")
    return value


async def _read_file(value: UploadFile, settings: Settings) -> Upload:
    if value.size is not None and value.size > settings.max_upload_bytes:
        return Upload(value.filename, error=_too_large(f"file {value.filename!r}", settings.max_upload_bytes))
    data = await value.read()
    if len(data) > settings.max_upload_bytes:
        return Upload(value.filename, error=_too_large(f"file {value.filename!r}", settings.max_upload_bytes))
    if not data:
        return Upload(value.filename, error=ApiError(400, "empty_file", f"file {value.filename!r} is empty"))
    return Upload(value.filename, data)


def _checked(upload: Upload) -> Upload:
    if upload.error is not None:
        raise upload.error
    return upload


async def read_single_image(request: Request, settings: Settings) -> tuple[Upload, FormData | None]:
    """The image of ``/v1/predict`` and, for multipart, the form (for its other fields)."""
    media_type = _media_type(request)
    if media_type == "multipart/form-data":
        form = await _parse_multipart(
            request,
            settings.max_upload_bytes + MULTIPART_OVERHEAD,
            max_files=1,
            too_many="/v1/predict takes one file; send several to /v1/predict/batch",
        )
        try:
            if "file" not in form:
                raise ApiError(422, "invalid_request", "multipart body needs a 'file' field with the image")
            return _checked(await _read_file(_file_part(form["file"], "file"), settings)), form
        finally:
            await form.close()
    if media_type.startswith(RAW_BODY_TYPES):
        data = await read_body(request, settings.max_upload_bytes, "the image")
        if not data:
            raise ApiError(400, "empty_file", "the request body is empty")
        return Upload(None, data), None
    raise ApiError(
        415,
        "unsupported_media_type",
        f"content type {media_type or '(none)'!r}: send multipart/form-data with a 'file' field, "
        "or the image itself as the body with an image/* content type",
    )


async def read_batch_images(request: Request, settings: Settings) -> tuple[list[Upload], FormData]:
    """The images of ``/v1/predict/batch``; a file that is empty, over the size limit or not an image is an item
    error, a text part among the files a request error."""
    if _media_type(request) != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data with one 'files' field per image")
    form = await _parse_multipart(
        request,
        settings.max_request_bytes,
        max_files=settings.max_batch_items,
        too_many=f"a batch holds at most {settings.max_batch_items} files (PRODUCTREC_MAX_BATCH_ITEMS)",
    )
    try:
        values = form.getlist("files")
        if not values:
            raise ApiError(422, "invalid_request", "multipart body needs one or more 'files' fields")
        files = [_file_part(value, "files") for value in values]
        return [await _read_file(file, settings) for file in files], form
    finally:
        await form.close()
