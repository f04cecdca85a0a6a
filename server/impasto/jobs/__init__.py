"""The jobs layer: one plain request in, events out; knows nothing of gRPC or loss maths.

A request's life: `Jobs.admit` checks it before any byte of its images arrives and holds memory for
them; its bytes go into the returned `Upload`; `Jobs.submit` decodes them under the server's memory
budget, resolves the styles, plans the job and queues it; the job's events go to its `on_event`.
The gRPC service and the CLI's in-process mode both go this way, so they cannot drift apart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from ..engine import RECIPES, Engine, Options, Style
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
from ..library import BrokenPreset, InvalidStyleId, StyleExists, StyleLibrary, quoted, slug
from .budget import ByteBudget
from .errors import JobError, Kind, shutting_down
from .queue import Event, Failed, Finished, Job, JobQueue, Preview, Queued, Result, Started
from .request import ImageSpec, Limits, Request, StyleRef, Upload, check_request

__all__ = [
    "Event",
    "Failed",
    "Finished",
    "ImageSpec",
    "Job",
    "JobError",
    "Jobs",
    "Kind",
    "Limits",
    "Preview",
    "Queued",
    "Request",
    "Result",
    "Started",
    "StyleRef",
    "Upload",
]

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
        """One worker per engine (device), all fed by one queue."""
        self.engines, self.library, self.limits = engines, library, limits
        self.queue = JobQueue(engines, limits.max_queue, free_memory)
        self.budget = ByteBudget(limits.max_inflight_bytes)

    def admit(self, request: Request) -> Upload:
        """Checks `request` and holds memory for its images; their bytes go into the Upload."""
        check_request(request, self.limits)
        if self.queue.closed:
            raise shutting_down()
        for style in request.styles:
            if style.preset_id is not None:
                self._find(style.preset_id)
            if style.save_as:
                self._check_name_free(style.save_as)
        announced = sum(image.total_bytes for image in request.images)
        # Raw RGBA8 pixels are the upload itself; the working copies made from them come on top.
        decoded = sum(image.total_bytes for image in request.images if image.format == "rgba8")
        return Upload(request, self.budget.reserve(announced + decoded, "this request's images"))

    def submit(self, upload: Upload, on_event: Callable[[Event], None], cancel: threading.Event) -> Job:
        """Decodes the upload and queues the job (blocking: decoding takes time). `cancel`, set from any
        thread at any time, stops the job; set before it is queued, the job is never queued."""
        request = upload.request
        try:
            upload.check_complete()
            pictures = [self._decode(upload, index) for index in range(len(request.images))]
            uploads = pictures[1:]
            options = self._options(request, uploads)
            styles, description = self._styles(request, uploads)
            content = pictures[0]
            job = Job(
                content.rgb if options.size == "full" else content.rgb_fitting(options.size),
                styles,
                options,
                source=content,
                reply_encoded=request.content.format == "encoded",
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
            self._save_presets(request, upload, uploads)
        except JobError as error:
            self.queue.cancel(job, error)
        upload.buffers = []
        return job

    def thumbnail(self, preset_id: str) -> tuple[str, bytes]:
        """A preset's (version, PNG thumbnail)."""
        self._find(preset_id)
        preset = self.library.find(preset_id)
        try:
            return preset.version, self.library.thumbnail(preset)
        except BrokenPreset as error:
            raise JobError(Kind.BROKEN_PRESET, str(error)) from None

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
            raise JobError(Kind.EXHAUSTED, str(error)) from None
        except ImageError as error:
            raise JobError(Kind.INVALID, str(error)) from None

    def _options(self, request: Request, uploads: list[Picture]) -> Options:
        recipe = RECIPES[request.recipe]
        if request.optimizer is not None:
            recipe = with_optimizer(recipe, request.optimizer)
        init = request.init if request.init_upload is None else uploads[request.init_upload].rgb
        return Options(
            size=request.size or self.limits.default_size,
            iterations=request.iterations or self.limits.default_iterations,
            strength=request.strength,
            style_scale=request.style_scale,
            preserve_colors=request.preserve_colors,
            init=init,
            seed=request.seed,
            preview_seconds=request.preview_seconds,
            recipe=recipe,
            memory_budget=request.memory_budget or self.limits.memory_budget,
        )

    def _styles(self, request: Request, uploads: list[Picture]) -> tuple[list[Style], str]:
        styles, names = [], []
        for style in request.styles:
            if style.preset_id is not None:
                picture = self._load(style.preset_id)
                names.append(style.preset_id)
            else:
                picture = uploads[style.upload]
                names.append(slug(style.save_as) or f"upload{style.upload + 1}")
            styles.append(Style(picture.rgb, style.weight))
        return styles, "+".join(names)

    # ---- the style library ---------------------------------------------------------------------

    def _find(self, preset_id: str) -> None:
        try:
            self.library.find(preset_id)
        except InvalidStyleId as error:
            raise JobError(Kind.INVALID, str(error)) from None
        except KeyError:
            raise JobError(
                Kind.NOT_FOUND,
                f"no style preset {quoted(preset_id)} on this server; `impasto styles` lists the presets",
            ) from None

    def _load(self, preset_id: str) -> Picture:
        self._find(preset_id)
        try:
            return self.library.load(preset_id)
        except KeyError:  # removed since it was found
            self._find(preset_id)
            raise
        except BrokenPreset as error:
            raise JobError(Kind.BROKEN_PRESET, str(error)) from None

    def _check_name_free(self, name: str) -> None:
        preset_id = slug(name)
        try:
            self.library.find(preset_id)
        except (KeyError, InvalidStyleId):
            return
        raise JobError(Kind.ALREADY_EXISTS, f"a preset '{preset_id}' exists already; choose another name")

    def _save_presets(self, request: Request, upload: Upload, uploads: list[Picture]) -> None:
        for style in request.styles:
            if not style.save_as:
                continue
            index = style.upload
            if request.uploads[index].format == "encoded":
                data = bytes(upload.buffers[index + 1])
            else:
                picture = uploads[index]
                data = png_bytes(compose_result(picture.rgb, picture))
            try:
                self.library.save(style.save_as, data)
            except StyleExists as error:
                raise JobError(Kind.ALREADY_EXISTS, str(error)) from None
            except (InvalidStyleId, ImageError) as error:
                raise JobError(Kind.INVALID, str(error)) from None
            except OSError as error:
                raise JobError(Kind.BUG, f"the server could not save the style: {error.strerror}") from None
