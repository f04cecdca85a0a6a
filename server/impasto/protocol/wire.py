"""The protocol's types to and from the contract's protobuf messages: each direction written once.

Conversion goes by field name: a dataclass field and the message field of the same name map one to
one, nested dataclasses to nested messages, tuples to repeated fields, `None` to an unset optional
field, and a string to the enum value that ends in it upper-cased (`"rgba8"` ↔ PIXEL_FORMAT_RGBA8).
The few fields that do not map one to one are converted by hand below: the settings, which the
contract keeps flat in StylizeParameters, and the preview interval, whose "none" is a negative number
there. Uses protobuf's runtime only (pure Python in the GIMP plug-in), never a gRPC call.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Iterator, Sequence
from typing import Any

from google.protobuf.message import Message

from ..v1 import impasto_pb2 as pb
from .events import CHUNK_BYTES, Event, Preview, Progress, Queued, Started
from .settings import NO_PREVIEWS, Image, ImageHeader, Parameters, Settings, StyleChoice

T = typing.TypeVar("T")

# Request metadata: a client's random id, so that a server counts the calls of each user apart when all
# arrive over one connection (through a proxy); its limits per client count per id.
CLIENT_ID_KEY = "impasto-client-id"


def to_message(value: Any, message: Message) -> Message:
    """Fills `message` from the dataclass `value`'s fields of the same names; returns it."""
    for field in message.DESCRIPTOR.fields:
        if not hasattr(value, field.name):
            continue
        item = getattr(value, field.name)
        if item is None:
            continue
        target = getattr(message, field.name)
        if _repeated(field):
            if field.message_type is not None:
                for element in item:
                    to_message(element, target.add())
            else:
                target.extend(_to_enum(field, e) if field.enum_type else e for e in item)
        elif field.message_type is not None:
            to_message(item, target)
        else:
            setattr(message, field.name, _to_enum(field, item) if field.enum_type else item)
    return message


def from_message(message: Message, cls: type[T]) -> T:
    """A `cls` dataclass from `message`'s fields of the same names (an unset optional field: None)."""
    descriptors = message.DESCRIPTOR.fields_by_name
    values = {}
    for name, hint in _hints(cls).items():
        field = descriptors.get(name)
        if field is None:
            continue
        item = getattr(message, name)
        if _repeated(field):
            element = typing.get_args(hint)[0]
            values[name] = tuple(_from_value(field, e, element) for e in item)
        elif field.has_presence and field.message_type is None and not message.HasField(name):
            values[name] = None
        else:
            values[name] = _from_value(field, item, hint)
    return cls(**values)


# ---- a job's request -------------------------------------------------------------------------------


def parameters_message(parameters: Parameters) -> pb.StylizeParameters:
    message = to_message(parameters, pb.StylizeParameters())  # the content and the style choices
    for upload in parameters.uploads:
        to_message(upload, message.style_uploads.add())
    settings = parameters.settings
    to_message(settings, message)
    if settings.preview_seconds is not None:
        none = settings.preview_seconds == NO_PREVIEWS
        message.preview_interval_seconds = -1.0 if none else settings.preview_seconds
    return message


def parameters_from_message(message: pb.StylizeParameters) -> Parameters:
    settings = from_message(message, Settings)
    if message.HasField("preview_interval_seconds"):
        interval = message.preview_interval_seconds
        settings = dataclasses.replace(settings, preview_seconds=NO_PREVIEWS if interval < 0 else interval)
    return Parameters(
        content=from_message(message.content, ImageHeader),
        styles=tuple(from_message(choice, StyleChoice) for choice in message.styles),
        uploads=tuple(from_message(header, ImageHeader) for header in message.style_uploads),
        settings=settings,
    )


def request_messages(
    content: Image, styles: Sequence[StyleChoice], uploads: Sequence[Image], settings: Settings
) -> Iterator[pb.StylizeRequest]:
    """A Stylize call's requests: the parameters, then every image's bytes in chunks, content first."""
    parameters = Parameters(content.header, tuple(styles), tuple(u.header for u in uploads), settings)
    yield pb.StylizeRequest(parameters=parameters_message(parameters))
    for index, image in enumerate([content, *uploads]):
        for data in chunks(image.data):
            yield pb.StylizeRequest(chunk=pb.Chunk(image=index, data=data))


def chunks(data: bytes | memoryview) -> Iterator[bytes]:
    """The contract's pieces of image data, at most CHUNK_BYTES each (one empty piece for no data)."""
    view = memoryview(data)
    for offset in range(0, max(len(view), 1), CHUNK_BYTES):
        yield bytes(view[offset : offset + CHUNK_BYTES])


# ---- a job's events --------------------------------------------------------------------------------

_EVENT_FIELDS = {Queued: "queued", Started: "started", Progress: "progress", Preview: "preview"}
_EVENT_TYPES = {name: cls for cls, name in _EVENT_FIELDS.items()}


def event_message(event: Event) -> pb.StylizeEvent:
    """Queued, Started, Progress or Preview as a StylizeEvent (a Result goes as `result_messages`)."""
    message = pb.StylizeEvent()
    to_message(event, getattr(message, _EVENT_FIELDS[type(event)]))
    return message


def event_from_message(message: pb.StylizeEvent) -> Event | None:
    """The event a StylizeEvent holds; None for a result chunk (gathered by `ResultAssembler`)."""
    kind = message.WhichOneof("event")
    cls = _EVENT_TYPES.get(kind or "")
    return from_message(getattr(message, kind), cls) if cls is not None else None


def result_messages(image: Image) -> Iterator[pb.StylizeEvent]:
    """A result in chunks; the first one carries its header."""
    header = to_message(image.header, pb.ImageHeader())
    header.width, header.height = image.width, image.height  # a result says its size in either format
    for index, piece in enumerate(chunks(image.data)):
        chunk = pb.ResultChunk(data=piece)
        if index == 0:
            chunk.header.CopyFrom(header)
        yield pb.StylizeEvent(result=chunk)


class ResultAssembler:
    """Gathers a result's chunks; `image` is None until a header has come."""

    def __init__(self) -> None:
        self._header: pb.ImageHeader | None = None
        self._parts: list[bytes] = []

    def add(self, chunk: pb.ResultChunk) -> None:
        if chunk.HasField("header"):
            self._header = chunk.header
        self._parts.append(chunk.data)

    @property
    def image(self) -> Image | None:
        header = self._header
        if header is None:
            return None
        encoded = header.format == pb.PIXEL_FORMAT_ENCODED
        return Image(b"".join(self._parts), header.width, header.height, encoded)


# ---- by field name ---------------------------------------------------------------------------------


def _repeated(field) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf ≥ 5.28; `label` before
    return repeated if repeated is not None else field.label == field.LABEL_REPEATED


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {name: hint for name, hint in typing.get_type_hints(cls).items() if name in names}


def _from_value(field, item: Any, hint: Any) -> Any:
    if field.message_type is not None:
        return from_message(item, _dataclass_in(hint))
    if field.enum_type is not None:
        return _from_enum(field, item)
    return item


def _dataclass_in(hint: Any) -> type:
    """The dataclass of a hint such as `Device` or `Device | None`."""
    if dataclasses.is_dataclass(hint):
        return hint
    return next(arg for arg in typing.get_args(hint) if dataclasses.is_dataclass(arg))


def _enum_prefix(field) -> str:
    """PixelFormat -> "PIXEL_FORMAT_": the contract's enum values are named after their type."""
    name = field.enum_type.name
    return "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(name)).upper() + "_"


def _to_enum(field, value: str) -> int:
    member = field.enum_type.values_by_name.get(_enum_prefix(field) + (value.upper() or "UNSPECIFIED"))
    return member.number if member is not None else 0


def _from_enum(field, number: int) -> str:
    member = field.enum_type.values_by_number.get(number)
    suffix = member.name.removeprefix(_enum_prefix(field)) if member is not None else "UNSPECIFIED"
    return "" if suffix == "UNSPECIFIED" else suffix.lower()
