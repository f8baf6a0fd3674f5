"""Reading an uploaded file from a request body, streamed: a multipart form field or a raw body.

One reader for images (collected in memory) and videos (written to a temporary file): the caller passes a
``write`` callback and this module enforces the content type, the byte limit and the form's shape. No FastAPI here.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from server.pipeline import InputError

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers allowed on top of the byte limit
OCTET_STREAM = "application/octet-stream"  # what curl and browsers send for files they cannot name
ANIMATIONS = ("image/gif", "image/png", "image/apng", "image/webp")  # may be videos: server/video.py judges the bytes
# A form for these routes has one file and perhaps a few fields. Tiny parts cost the parser far more per byte (a
# body of 50-byte parts: ~11 s of event-loop time per 50 MB), so a body of more parts than this is refused.
MAX_PARTS = 64


async def receive_upload(
    headers: Mapping[str, str],
    chunks: AsyncIterable[bytes],
    write: Callable[[bytes], None],
    *,
    max_bytes: int,
    kind: str,
    field: str = "file",
    raw_octet_stream: bool = False,
) -> None:
    """Stream the uploaded ``kind`` (``image`` or ``video``) into ``write``, chunk by chunk.

    The body is a multipart form with ``field`` or a raw ``kind/*`` body (also ``application/octet-stream`` if
    ``raw_octet_stream``). ``InputError``: 413 past ``max_bytes`` (checked on Content-Length first, then while
    streaming; a form may add ``MULTIPART_OVERHEAD`` bytes of boundaries, headers and other fields in all), 415 for
    another content type (a video field: only an image's, not a GIF's, PNG's or WebP's), 400 for an empty body or a
    broken form, 422 for a form without ``field``.
    """
    mime, options = parse_options_header(headers.get("content-type", ""))
    mime_str = mime.decode("latin-1").lower()
    multipart = mime_str == "multipart/form-data"
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes + (MULTIPART_OVERHEAD if multipart else 0):
        raise InputError(413, f"upload is {declared} bytes, over the {kind} limit of {max_bytes} bytes")
    if not multipart and not (mime_str.startswith(f"{kind}/") or (raw_octet_stream and mime_str == OCTET_STREAM)):
        raise InputError(
            415,
            f"unsupported content type {mime_str or 'none'!r}: send a multipart form with a {field!r} field "
            f"or a raw body with Content-Type {kind}/*",
        )
    size = 0

    def limited_write(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > max_bytes:
            raise InputError(413, f"upload is over the {kind} limit of {max_bytes} bytes")
        write(data)

    if multipart:
        body = CappedBody(chunks, max_bytes + MULTIPART_OVERHEAD, kind)
        await _read_field(options.get(b"boundary"), body, limited_write, kind, field)
        if size == 0:
            raise InputError(400, f"field {field!r} is empty: no {kind} data was sent")
        return
    async for chunk in chunks:
        limited_write(chunk)
    if size == 0:
        raise InputError(400, f"empty body: no {kind} data was sent")


class CappedBody:
    """The chunks of a whole body, counted: 413 once they pass ``limit``, whatever part they belong to."""

    def __init__(self, chunks: AsyncIterable[bytes], limit: int, kind: str) -> None:
        self.chunks, self.limit, self.kind, self.size = chunks, limit, kind, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks:
            self.size += len(chunk)
            if self.size > self.limit:
                raise InputError(413, f"multipart body is over {self.limit} bytes (the {self.kind} limit plus forms)")
            yield chunk


async def _read_field(
    boundary: bytes | None, chunks: CappedBody, write: Callable[[bytes], None], kind: str, field: str
) -> None:
    """Write the first part named ``field`` of a multipart body into ``write``."""
    if not boundary:
        raise InputError(400, "multipart body without a boundary in its Content-Type")
    state: dict[str, Any] = {
        "headers": {},
        "name": b"",
        "value": b"",
        "current": None,
        "found": False,
        "done": False,
        "parts": 0,
    }

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["name"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["name"].decode("latin-1").lower()] = state["value"]
        state["name"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        state["parts"] += 1
        if state["parts"] > MAX_PARTS:
            raise InputError(400, f"multipart body with more than {MAX_PARTS} parts: send the {kind} as one field")
        _, disposition = parse_options_header(state["headers"].get("content-disposition", b""))
        state["current"] = disposition.get(b"name", b"").decode("utf-8", "replace")
        if state["current"] == field and not state["found"]:
            state["found"] = True
            part_type = parse_options_header(state["headers"].get("content-type", b""))[0].decode("latin-1").lower()
            # An unlabelled file (octet-stream) is let through: the bytes decide then. So is a video under any label
            # but an image's: clients label a file by its name's extension, and their tables call .ts a Qt
            # translation (text/vnd.trolltech.linguist), .3gp audio, .mxf or .asf application/*.
            if kind == "video" and part_type.startswith("image/") and part_type not in ANIMATIONS:
                raise InputError(415, f"field {field!r} has content type {part_type!r}: send images to POST /predict")
            if kind != "video" and part_type and not part_type.startswith(f"{kind}/") and part_type != OCTET_STREAM:
                raise InputError(415, f"field {field!r} has content type {part_type!r}, expected {kind}/*")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["current"] == field and not state["done"]:
            write(data[start:end])

    def on_part_end() -> None:
        if state["current"] == field:
            state["done"] = True
        state["headers"], state["current"] = {}, None

    callbacks = {
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    try:
        # Inside the try: the constructor refuses a boundary over 256 characters (RFC 2046 allows 70).
        parser = MultipartParser(boundary, callbacks)
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise InputError(400, f"malformed multipart body: {exc}") from exc
    if chunks.size == 0:
        raise InputError(400, f"empty body: no {kind} data was sent")
    if not state["found"]:
        raise InputError(422, f"multipart form has no {field!r} field: send the {kind} as {field}=@<path>")
