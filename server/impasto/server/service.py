"""The StyleTransfer servicer: translates between the proto contract and the job queue."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import torch

from .. import __version__
from ..client import CHUNK_BYTES, chunks
from ..engine import Cancelled, Options, Progress, Style
from ..engine.imageops import fit_long_side, resize
from ..engine.stylize import check_options
from ..images import (
    ImageError,
    Picture,
    TooLarge,
    compose_result,
    compose_rgba,
    decode_picture,
    picture_from_rgba8,
    png_bytes,
    to_pil,
)
from ..library import InvalidStyleId, StyleExists, StyleLibrary
from ..v1 import impasto_pb2 as pb
from ..v1 import impasto_pb2_grpc
from . import jobs
from .device import DeviceInfo

PREVIEW_SIDE = 512
DEFAULT_PREVIEW_SECONDS = 2.0
# Progress events go out at most this often; each scale's last iteration always does.
PROGRESS_INTERVAL_SECONDS = 0.05


@dataclass(frozen=True)
class Limits:
    max_pixels: int
    max_queue: int
    max_size: int
    max_iterations: int = 5000
    default_size: int = 512
    default_iterations: int = 100


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


class StyleTransferServicer(impasto_pb2_grpc.StyleTransferServicer):
    def __init__(self, queue: jobs.JobQueue, library: StyleLibrary, limits: Limits, device: DeviceInfo):
        self.queue, self.library, self.limits, self.device = queue, library, limits, device

    def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext) -> pb.ServerInfo:
        limits = self.limits
        return pb.ServerInfo(
            server_version=__version__,
            protocol_version=pb.PROTOCOL_VERSION_CURRENT,
            device=self._device(),
            weights=self.queue.engine.weights.name,
            limits=pb.Limits(
                max_pixels=limits.max_pixels,
                max_queue=limits.max_queue,
                max_chunk_bytes=CHUNK_BYTES,
                max_size=limits.max_size,
                max_iterations=limits.max_iterations,
            ),
            default_size=limits.default_size,
            default_iterations=limits.default_iterations,
            queue_length=self.queue.waiting,
            running_jobs=self.queue.running,
        )

    def ListStyles(
        self, request: pb.ListStylesRequest, context: grpc.ServicerContext
    ) -> pb.ListStylesResponse:
        styles = [
            pb.StylePreset(
                id=p.id,
                title=p.title,
                artist=p.artist,
                year=p.year,
                licence=p.licence,
                source_url=p.source_url,
                thumbnail_png=self.library.thumbnail(p),
                recommended_strength=p.strength,
                recommended_style_scale=p.style_scale,
            )
            for p in self.library.presets()
        ]
        return pb.ListStylesResponse(styles=styles)

    def Stylize(
        self, requests: Iterator[pb.StylizeRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.StylizeEvent]:
        try:
            job, content, reply_format = self._receive_job(requests)
            context.add_callback(lambda: self.queue.cancel(job))
            self.queue.submit(job)
        except RequestError as error:
            context.abort(error.code, str(error))
        except jobs.QueueFull as error:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        except jobs.ShuttingDown as error:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        last_progress = -math.inf
        while True:
            event = job.events.get()
            if isinstance(event, jobs.Failed):
                context.abort(*_status(event.error, job.id))
            if isinstance(event, jobs.Finished):
                yield from _result_chunks(event.result, content, reply_format)
                return
            if isinstance(event, Progress) and event.iteration < event.iterations:
                # A GPU runs hundreds of iterations a second; a client needs a few reports.
                if time.monotonic() - last_progress < PROGRESS_INTERVAL_SECONDS:
                    continue
                last_progress = time.monotonic()
            yield self._event(job, event)

    # ---- proto -> job ------------------------------------------------------------------------

    def _receive_job(self, requests: Iterator[pb.StylizeRequest]) -> tuple[jobs.Job, Picture, int]:
        first = next(requests, None)
        if first is None or not first.HasField("parameters"):
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message must carry the parameters"
            )
        params = first.parameters
        headers = [params.content, *params.style_uploads]
        names = ["content image"] + [f"uploaded style {i + 1}" for i in range(len(params.style_uploads))]
        for header, name in zip(headers, names, strict=True):
            self._check_header(header, name)
        data = _receive_chunks(requests, headers, names)
        content = self._decode(data[0], params.content, names[0])
        uploads = [self._decode(d, h, n) for d, h, n in zip(data[1:], headers[1:], names[1:], strict=True)]
        styles, description = self._styles(params, uploads)
        options = self._options(params)
        try:
            check_options(options, styles)
        except ValueError as error:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error
        for choice in params.styles:
            if choice.save_as_preset:
                self._save_upload(choice, uploads, data[1:], headers[1:])
        job = jobs.Job(content.rgb_fitting(options.size), styles, options, description)
        return job, content, params.content.format

    def _check_header(self, header: pb.ImageHeader, name: str) -> None:
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        if header.format == pb.PIXEL_FORMAT_RGBA8:
            pixels = header.width * header.height
            if pixels > self.limits.max_pixels:
                raise RequestError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{name} is {header.width}×{header.height} = "
                    f"{pixels:,} pixels, over this server's limit of {self.limits.max_pixels:,}",
                )
            if header.total_bytes != pixels * 4 or pixels == 0:
                raise RequestError(
                    invalid,
                    f"{name}: {header.width}×{header.height} RGBA8 is {pixels * 4:,} bytes, "
                    f"but the header announces {header.total_bytes:,}",
                )
        elif header.format == pb.PIXEL_FORMAT_ENCODED:
            if not 0 < header.total_bytes <= self.limits.max_pixels * 4:
                raise RequestError(
                    invalid,
                    f"{name}: an encoded image of {header.total_bytes:,} bytes is empty or "
                    "larger than any image this server accepts",
                )
        else:
            raise RequestError(invalid, f"{name}: the pixel format is not set (RGBA8 or ENCODED)")

    def _decode(self, data: bytes, header: pb.ImageHeader, name: str) -> Picture:
        try:
            if header.format == pb.PIXEL_FORMAT_RGBA8:
                return picture_from_rgba8(data, header.width, header.height, name)
            return decode_picture(data, name, self.limits.max_pixels)
        except TooLarge as error:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)) from error
        except ImageError as error:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error

    def _styles(self, params: pb.StylizeParameters, uploads: list[Picture]) -> tuple[list[Style], str]:
        if not params.styles:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT, "choose at least one style (a preset or an upload)"
            )
        styles, names = [], []
        for choice in params.styles:
            weight = choice.weight or 1.0
            if choice.HasField("preset_id"):
                try:
                    picture = self.library.load(choice.preset_id)
                except InvalidStyleId as error:
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error
                except KeyError:
                    raise RequestError(
                        grpc.StatusCode.NOT_FOUND,
                        f"no style preset '{choice.preset_id}' on this "
                        "server; ListStyles (impasto styles) shows the presets",
                    ) from None
                except ImageError as error:
                    raise RequestError(
                        grpc.StatusCode.INTERNAL, f"preset '{choice.preset_id}' is broken: {error}"
                    ) from error
                names.append(choice.preset_id)
            elif choice.HasField("upload") and choice.upload < len(uploads):
                picture = uploads[choice.upload]
                names.append(f"upload{choice.upload + 1}")
            else:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"style choice refers to upload {choice.upload}, "
                    f"but {len(uploads)} style image(s) were uploaded",
                )
            styles.append(Style(picture.rgb, weight))
        return styles, "+".join(names)

    def _save_upload(self, choice: pb.StyleChoice, uploads: list[Picture], data: list[bytearray],
                     headers: list[pb.ImageHeader]) -> None:  # fmt: skip
        if not choice.HasField("upload"):
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT, "only an uploaded style can be saved as a preset"
            )
        index = choice.upload
        if headers[index].format == pb.PIXEL_FORMAT_ENCODED:
            file_bytes = data[index]
        else:
            file_bytes = png_bytes(compose_result(uploads[index].rgb, uploads[index]))
        try:
            self.library.save(choice.save_as_preset, file_bytes)
        except StyleExists as error:
            raise RequestError(grpc.StatusCode.ALREADY_EXISTS, str(error)) from error
        except (InvalidStyleId, ImageError) as error:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error
        except OSError as error:
            raise RequestError(
                grpc.StatusCode.INTERNAL, f"could not save the style on the server: {error}"
            ) from error

    def _options(self, params: pb.StylizeParameters) -> Options:
        limits = self.limits
        size = params.size or limits.default_size
        iterations = params.iterations or limits.default_iterations
        if size > limits.max_size:
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"a working size of {size} px is over this "
                f"server's limit of {limits.max_size} px (long side)",
            )
        if iterations > limits.max_iterations:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{iterations} iterations is more than this server's limit of {limits.max_iterations}",
            )
        preview = params.preview_interval_seconds
        return Options(
            size=size,
            iterations=iterations,
            strength=params.strength if params.HasField("strength") else 1.0,
            style_scale=params.style_scale or 1.0,
            preserve_colors=params.preserve_colors,
            seed=params.seed,
            preview_seconds=None if preview < 0 else (preview or DEFAULT_PREVIEW_SECONDS),
        )

    # ---- job -> proto ------------------------------------------------------------------------

    def _device(self) -> pb.Device:
        d = self.device
        return pb.Device(
            kind=d.kind, name=d.name, memory_bytes=d.memory_bytes, precision=self.queue.engine.precision
        )

    def _event(self, job: jobs.Job, event: jobs.Event) -> pb.StylizeEvent:
        if isinstance(event, jobs.Queued):
            return pb.StylizeEvent(queued=pb.Queued(job_id=job.id, position=event.position))
        if isinstance(event, jobs.Started):
            height, width = event.scales[-1].size
            return pb.StylizeEvent(
                started=pb.Started(
                    job_id=job.id,
                    device=self._device(),
                    scales=len(event.scales),
                    iterations_per_scale=event.scales[-1].iterations,
                    total_iterations=sum(scale.iterations for scale in event.scales),
                    working_width=width,
                    working_height=height,
                    estimated_seconds=event.estimate.seconds,
                    estimated_memory_bytes=event.estimate.peak_bytes,
                )
            )
        if isinstance(event, Progress):
            return pb.StylizeEvent(progress=_progress(event))
        if isinstance(event, jobs.Preview):
            image = event.image
            small = resize(image, fit_long_side(*image.shape[2:], min(PREVIEW_SIDE, max(image.shape[2:]))))
            png = png_bytes(to_pil(small))
            return pb.StylizeEvent(
                preview=pb.Preview(
                    png=png, width=small.shape[3], height=small.shape[2], fraction=event.progress.fraction
                )
            )
        raise TypeError(f"unexpected job event {event!r}")


def _receive_chunks(
    requests: Iterator[pb.StylizeRequest], headers: list[pb.ImageHeader], names: list[str]
) -> list[bytearray]:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    buffers = [bytearray() for _ in headers]
    for request in requests:
        if not request.HasField("chunk"):
            raise RequestError(invalid, "parameters may be sent only once, in the first message")
        chunk = request.chunk
        if chunk.image >= len(buffers):
            raise RequestError(
                invalid, f"a chunk names image {chunk.image}, but only {len(buffers)} were announced"
            )
        if len(chunk.data) > CHUNK_BYTES:
            raise RequestError(
                invalid, f"a chunk of {len(chunk.data):,} bytes is over the {CHUNK_BYTES:,}-byte limit"
            )
        buffer = buffers[chunk.image]
        if len(buffer) + len(chunk.data) > headers[chunk.image].total_bytes:
            raise RequestError(
                invalid,
                f"{names[chunk.image]}: more bytes than the header's {headers[chunk.image].total_bytes:,}",
            )
        buffer += chunk.data
    for buffer, header, name in zip(buffers, headers, names, strict=True):
        if len(buffer) != header.total_bytes:
            raise RequestError(
                invalid, f"{name}: the upload ended after {len(buffer):,} of {header.total_bytes:,} bytes"
            )
    return buffers  # writable, so the pixels can be used in place


def _progress(p: Progress) -> pb.Progress:
    return pb.Progress(
        fraction=p.fraction,
        scale=p.scale,
        scales=p.scales,
        iteration=p.iteration,
        iterations=p.iterations,
        content_loss=p.content_loss,
        style_loss=p.style_loss,
        tv_loss=p.tv_loss,
        elapsed_seconds=p.elapsed,
        eta_seconds=p.eta if math.isfinite(p.eta) else 0.0,
    )


def _result_chunks(result: torch.Tensor, content: Picture, reply_format: int) -> Iterator[pb.StylizeEvent]:
    if reply_format == pb.PIXEL_FORMAT_RGBA8:
        data = memoryview(compose_rgba(result, content)).cast("B")
    else:
        data = memoryview(png_bytes(compose_result(result, content)))
        reply_format = pb.PIXEL_FORMAT_ENCODED
    height, width = content.size
    header = pb.ImageHeader(format=reply_format, width=width, height=height, total_bytes=len(data))
    for index, piece in enumerate(chunks(data)):
        chunk = pb.ResultChunk(data=piece)
        if index == 0:
            chunk.header.CopyFrom(header)
        yield pb.StylizeEvent(result=chunk)


def _status(error: BaseException, job_id: str) -> tuple[grpc.StatusCode, str]:
    if isinstance(error, Cancelled):
        return grpc.StatusCode.CANCELLED, "the job was cancelled"
    if isinstance(error, jobs.ShuttingDown):
        return grpc.StatusCode.UNAVAILABLE, str(error)
    if isinstance(error, jobs.NotEnoughMemory):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)
    if isinstance(error, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    return (
        grpc.StatusCode.INTERNAL,
        f"the server failed on job {job_id} ({type(error).__name__}); its log has details",
    )
