"""The jobs layer: one plain request in, the protocol's events out; knows nothing of gRPC or loss maths.

A request's life: `Jobs.admit` checks it before any byte of its images arrives, finds its presets and
holds memory for its images; its bytes go into the returned `Upload`; `Jobs.submit` decodes them under
the server's memory budget, makes the engine's options from the settings, and queues the job; the job's
events (`impasto.protocol`: Queued, Started, Progress, Preview, then Result or Failed) go to its
`on_event`. The gRPC service and the CLI's in-process mode both go this way, so they cannot drift apart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from ..engine import RECIPES, DoesNotFit, Engine, Options, Style, default_iterations, default_size, describe
from ..engine.imageops import fit_long_side
from ..engine.recipes import with_optimizer
from ..images import (
    ImageError,
    Picture,
    TooLarge,
    compose_result,
    decode_picture,
    picture_from_rgba8,
    png_bytes,
)
from ..library import BrokenPreset, LibraryFull, StyleExists, StyleLibrary
from ..protocol import (
    NO_PREVIEWS,
    Device,
    Event,
    ImpastoError,
    JobPlan,
    Kind,
    Limits,
    ScalePlan,
    bounds,
)
from ..style_files import InvalidStyleId, StyleFile, quoted, slug
from .budget import ByteBudget
from .queue import Job, JobQueue, shutting_down
from .request import Expert, Request, Upload, check_counts, check_request

__all__ = ["Expert", "Job", "Jobs", "Request", "Upload", "check_counts", "shutting_down"]

# Host bytes per decoded pixel while a job lives: 8-bit RGBA plus a float32 RGB copy.
DECODED_BYTES_PER_PIXEL = 16


class Jobs:
    def __init__(
        self,
        engines: list[Engine],
        library: StyleLibrary,
        limits: Limits,
        free_memory: Callable[[torch.device], int] | None = None,
    ):
        """One worker per engine (device), all fed by one queue; the defaults follow the first device."""
        self.engines, self.library, self.limits = engines, library, limits
        self.devices = [_device(engine) for engine in engines]
        self.default_size = default_size(engines[0].device)
        self.default_iterations = default_iterations(engines[0].device)
        self.queue = JobQueue(engines, self.devices, limits.max_queue, free_memory)
        self.budget = ByteBudget(limits.max_inflight_bytes)

    def admit(self, request: Request) -> Upload:
        """Checks `request`, finds its presets and holds memory for its images; their bytes go into the
        Upload. Blocking (it reads the style folders): call it off an event loop."""
        check_request(request, self.limits)
        if self.queue.closed:
            raise shutting_down()
        presets = self._presets(request)
        for style in request.parameters.styles:
            if style.save_as_preset:
                self._check_name_free(style.save_as_preset)
        announced = sum(image.total_bytes for image in request.images)
        # Raw RGBA8 pixels are the upload itself; the working copies made from them come on top.
        decoded = sum(image.total_bytes for image in request.images if image.format == "rgba8")
        reservation = self.budget.reserve(announced + decoded, "this request's images")
        return Upload(request, reservation, presets)

    def submit(self, upload: Upload, on_event: Callable[[Event], None], cancel: threading.Event) -> Job:
        """Decodes the upload and queues the job (blocking: decoding takes time). `cancel`, set from any
        thread at any time, stops the job; set before it is queued, the job is never queued."""
        request = upload.request
        try:
            upload.check_complete()
            pictures = [self._decode(upload, index) for index in range(len(request.images))]
            uploads = pictures[1:]
            options = self.options(request, uploads)
            styles, description = self._styles(upload, uploads)
            content = pictures[0]
            job = Job(
                content.rgb if options.size == "full" else content.rgb_fitting(options.size),
                styles,
                options,
                source=content,
                reply_encoded=request.parameters.content.format == "encoded",
                on_event=on_event,
                cancel=cancel,
                reservation=upload.reservation,
                description=description,
            )
            self.queue.submit(job)
        except BaseException:
            upload.release()
            raise
        try:
            self._save_presets(upload, uploads)
        except ImpastoError as error:
            self.queue.cancel(job, error)
        upload.buffers = []
        return job

    def options(self, request: Request, uploads: list[Picture]) -> Options:
        """The engine's options for a request: where its settings say None, the server's defaults."""
        settings, expert = request.parameters.settings, request.expert
        recipe = RECIPES[expert.recipe]
        if expert.optimizer is not None:
            recipe = with_optimizer(recipe, expert.optimizer)
        preview = bounds.PREVIEW_SECONDS.or_default(settings.preview_seconds)
        return Options(
            size="full" if settings.full_size else (settings.size or self.default_size),
            iterations=settings.iterations or self.default_iterations,
            strength=bounds.STRENGTH.or_default(settings.strength),
            style_scale=bounds.STYLE_SCALE.or_default(settings.style_scale),
            preserve_colors=settings.preserve_colors,
            init=expert.init if expert.init_upload is None else uploads[expert.init_upload].rgb,
            seed=int(bounds.SEED.or_default(settings.seed)),
            preview_seconds=None if preview == NO_PREVIEWS else preview,
            recipe=recipe,
            memory_budget=expert.memory_budget or self.limits.memory_budget,
            preview=settings.preview_only,
        )

    def plan(self, request: Request) -> JobPlan:
        """What the request's job would do and cost here, from the sizes its headers give, before any
        image is sent. Blocking (it may read the style folders): call it off an event loop."""
        check_request(request, self.limits, planning=True)
        content = request.parameters.content
        if not content.width or not content.height:
            raise ImpastoError(Kind.INVALID, "a plan needs the content's width and height in its header")
        size = (content.height, content.width)
        options = self.options(request, [])
        if options.size != "full" and max(size) > options.size:
            size = fit_long_side(*size, options.size)  # as the job's content is scaled down, never up
        presets = self._presets(request)
        style_sizes = []
        for index, style in enumerate(request.parameters.styles):
            if style.preset_id is not None:
                style_sizes.append(self._load(presets[index]).size)
            else:
                upload = request.parameters.uploads[style.upload]
                style_sizes.append((upload.height, upload.width) if upload.width and upload.height else size)
        engine = self.engines[0]
        try:
            plan = engine.plan(size, style_sizes, options)
        except DoesNotFit as error:
            raise ImpastoError(Kind.OUT_OF_MEMORY, str(error)) from None
        height, width = plan.working_size
        return JobPlan(
            device=self.devices[0],
            working_width=width,
            working_height=height,
            scales=tuple(
                ScalePlan(*reversed(s.size), s.iterations, s.tiles, s.seconds, s.device_bytes, s.host_bytes)
                for s in plan.scales
            ),
            estimated_seconds=plan.estimate.seconds,
            estimated_memory_bytes=plan.estimate.peak_bytes,
            host_memory_bytes=plan.estimate.host_bytes,
            jobs_ahead=self.queue.waiting + self.queue.running,
        )

    def thumbnail(self, preset_id: str) -> tuple[str, bytes]:
        """A preset's (version, PNG thumbnail). Blocking: call it off an event loop."""
        preset = self._find(preset_id)
        try:
            return preset.version, self.library.thumbnail(preset)
        except BrokenPreset as error:
            raise ImpastoError(Kind.BROKEN_PRESET, str(error)) from None

    def cancel(self, job: Job) -> None:
        self.queue.cancel(job)

    def close(self, grace_seconds: float) -> bool:
        return self.queue.close(grace_seconds)

    # ---- request -> engine ---------------------------------------------------------------------

    def _decode(self, upload: Upload, index: int) -> Picture:
        spec = upload.request.images[index]
        name = upload.request.image_name(index)
        data = upload.buffers[index]
        try:
            if spec.format == "rgba8":
                return picture_from_rgba8(data, spec.width, spec.height, name)
            return decode_picture(
                data,
                name,
                self.limits.max_pixels,
                before_decode=lambda w, h: upload.reservation.grow(w * h * DECODED_BYTES_PER_PIXEL, name),
            )
        except TooLarge as error:
            raise ImpastoError(Kind.TOO_LARGE, str(error)) from None
        except ImageError as error:
            raise ImpastoError(Kind.INVALID, str(error)) from None

    def _styles(self, upload: Upload, uploads: list[Picture]) -> tuple[list[Style], str]:
        styles, names = [], []
        for index, style in enumerate(upload.request.parameters.styles):
            if style.preset_id is not None:
                picture = self._load(upload.presets[index])
                names.append(style.preset_id)
            else:
                picture = uploads[style.upload]
                names.append(slug(style.save_as_preset) or f"upload{style.upload + 1}")
            styles.append(Style(picture.rgb, bounds.STYLE_WEIGHT.or_default(style.weight)))
        return styles, "+".join(names)

    # ---- the style library ---------------------------------------------------------------------

    def _presets(self, request: Request) -> dict[int, StyleFile]:
        """The library's presets the request's styles name, by style index: found once per job."""
        return {
            index: self._find(style.preset_id)
            for index, style in enumerate(request.parameters.styles)
            if style.preset_id is not None
        }

    def _find(self, preset_id: str) -> StyleFile:
        try:
            return self.library.find(preset_id)
        except InvalidStyleId as error:
            raise ImpastoError(Kind.INVALID, str(error)) from None
        except KeyError:
            raise ImpastoError(
                Kind.NOT_FOUND, f"no style preset {quoted(preset_id)} on this server"
            ) from None

    def _load(self, preset: StyleFile) -> Picture:
        try:
            return self.library.load(preset)
        except KeyError:
            raise ImpastoError(
                Kind.NOT_FOUND, f"style preset '{preset.id}' was removed from this server just now"
            ) from None
        except BrokenPreset as error:
            raise ImpastoError(Kind.BROKEN_PRESET, str(error)) from None

    def _check_name_free(self, name: str) -> None:
        """Raises ImpastoError unless an upload can be saved as a preset of that name now."""
        try:
            self.library.check_room()
        except LibraryFull as error:
            raise ImpastoError(Kind.TOO_LARGE, str(error)) from None
        preset_id = slug(name)
        try:
            self.library.find(preset_id)
        except (KeyError, InvalidStyleId):
            return
        raise ImpastoError(Kind.ALREADY_EXISTS, f"a preset '{preset_id}' exists already; choose another name")

    def _save_presets(self, upload: Upload, uploads: list[Picture]) -> None:
        request = upload.request
        for style in request.parameters.styles:
            if not style.save_as_preset:
                continue
            index = style.upload
            if request.parameters.uploads[index].format == "encoded":
                data = bytes(upload.buffers[index + 1])
            else:
                picture = uploads[index]
                data = png_bytes(compose_result(picture.rgb, picture))
            try:
                self.library.save(style.save_as_preset, data, from_client=True)
            except StyleExists as error:
                raise ImpastoError(Kind.ALREADY_EXISTS, str(error)) from None
            except LibraryFull as error:
                raise ImpastoError(Kind.TOO_LARGE, str(error)) from None
            except (InvalidStyleId, ImageError) as error:
                raise ImpastoError(Kind.INVALID, str(error)) from None
            except OSError as error:
                raise ImpastoError(
                    Kind.BUG, f"the server could not save the style: {error.strerror}"
                ) from None


def _device(engine: Engine) -> Device:
    info = describe(engine.device)
    return Device(info.kind, info.name, info.memory_bytes, engine.precision)
