"""What a server says: about itself and its presets, and the events of a job, in one family.

Field names are the contract's (protos/impasto/v1/impasto.proto), so that `wire.py` converts each type
to and from its message by name. A job's events come in this order: `Queued` (again whenever its place
changes), `Started`, then `Progress` and `Preview` as it runs, and last `Result` or `Failed`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ImpastoError
from .settings import Image

CHUNK_BYTES = 1 << 20  # the contract's largest piece of image data in one message


@dataclass(frozen=True)
class Device:
    kind: str = ""  # "cuda", "mps" or "cpu"
    name: str = ""  # e.g. "NVIDIA H100 80GB HBM3", or the CPU model
    memory_bytes: int = 0  # total device memory (RAM for a CPU)
    precision: str = ""  # "bf16" or "fp32": what the convolutions run in

    def __str__(self) -> str:
        return f"{self.kind} — {self.name}"


@dataclass(frozen=True)
class DeviceState:
    device: Device = Device()
    busy: bool = False  # running a job now


@dataclass(frozen=True)
class Limits:
    """A server's limits, as its flags set them and its ServerInfo tells them; a request that crosses
    one gets a status naming it. These defaults are the server's flags' defaults."""

    max_pixels: int = 100_000_000  # width × height of a content or style image (less on a small host)
    max_queue: int = 8  # jobs waiting; one more gets RESOURCE_EXHAUSTED
    max_chunk_bytes: int = CHUNK_BYTES
    max_size: int = 4096  # largest working long side (less on a small device)
    max_iterations: int = 5000
    max_styles: int = 8  # style choices per request, and style uploads per request
    max_request_bytes: int = 512 << 20  # the sum of one request's announced image bytes
    upload_timeout_seconds: float = 30.0  # for the whole upload, plus its size at the rate below
    min_upload_bytes_per_second: int = 1 << 20
    max_streams_per_client: int = 4  # open Stylize calls per client (its impasto-client-id, else connection)
    max_strength: float = 100.0
    full_size: bool = True  # honours Settings.full_size (an older server leaves this false)
    max_streams: int = 32  # open Stylize calls in all
    max_inflight_bytes: int = 4 << 30  # uploads and their decoded pixels, over all requests
    memory_budget: int | None = None  # device bytes a job may use; None: free memory less a margin
    parameters_timeout_seconds: float = 5.0  # for a call's first message, its parameters
    # Each message of the server's answer must be taken by the client within this plus its size at the
    # rate below; a client that stops reading has its call ended, and its slot freed.
    download_timeout_seconds: float = 10.0
    min_download_bytes_per_second: int = 1 << 20


@dataclass(frozen=True)
class Info:
    server_version: str = ""
    protocol_version: int = 0
    device: Device = Device()  # the first of `devices`
    weights: str = ""  # e.g. "vgg19-original"
    limits: Limits = Limits()
    default_size: int = 0  # the working long side of a job that leaves `size` unset
    default_iterations: int = 0
    queue_length: int = 0  # jobs waiting now
    running_jobs: int = 0
    devices: tuple[DeviceState, ...] = ()  # one worker each, fed by one queue
    idle_exit_minutes: float = 0.0  # the server ends itself after this long unused; 0: never

    @property
    def load(self) -> float:
        """Jobs running or waiting per device: what a client spreading work compares."""
        return (self.running_jobs + self.queue_length) / max(1, len(self.devices))


@dataclass(frozen=True)
class Preset:
    id: str  # a slug, used as StyleChoice.preset_id
    title: str
    artist: str = ""
    year: str = ""
    licence: str = ""
    source_url: str = ""
    recommended_strength: float = 0.0  # 0: no recommendation
    recommended_style_scale: float = 0.0
    version: str = ""  # changes whenever the preset's image changes: a key for cached thumbnails
    builtin: bool = False  # shipped with Impasto (else added on this server)


@dataclass(frozen=True)
class ScalePlan:
    width: int
    height: int
    iterations: int
    tiles: int = 0  # 0: painted whole
    seconds: float = 0.0
    device_bytes: int = 0  # peak device memory while it runs
    host_bytes: int = 0  # picture-sized state kept in host memory instead


@dataclass(frozen=True)
class JobPlan:
    """What a job would do and cost, before it is sent (PlanJob)."""

    device: Device
    working_width: int
    working_height: int
    scales: tuple[ScalePlan, ...]
    estimated_seconds: float
    estimated_memory_bytes: int  # peak device memory
    host_memory_bytes: int = 0
    jobs_ahead: int = 0  # running or waiting now

    @property
    def tiles(self) -> int:
        """Tiles of the finest scale painted in tiles; 0 when every scale is painted whole."""
        return max((scale.tiles for scale in self.scales), default=0)


@dataclass(frozen=True)
class Queued:
    job_id: str
    position: int  # jobs ahead of this one; 0 = next to start


@dataclass(frozen=True)
class Started:
    job_id: str
    device: Device  # the one running this job
    scales: int
    iterations_per_scale: int  # at the working size; coarser scales run fewer
    total_iterations: int
    working_width: int
    working_height: int
    estimated_seconds: float
    estimated_memory_bytes: int  # peak device memory of the largest scale


@dataclass(frozen=True)
class Progress:
    fraction: float  # of the job's work, 0..1, never decreasing
    scale: int  # 1-based
    scales: int
    iteration: int  # 1-based, within the scale
    iterations: int
    content_loss: float
    style_loss: float
    tv_loss: float
    elapsed_seconds: float
    eta_seconds: float  # 0 while unknown
    tile: int = 0  # on a scale painted in tiles: the tile just done, of `tiles`; else 0
    tiles: int = 0


@dataclass(frozen=True)
class Preview:
    png: bytes  # long side at most 512 px
    width: int
    height: int
    fraction: float


@dataclass(frozen=True)
class Result:
    image: Image  # at the content's own size, in the format it was sent in


@dataclass(frozen=True)
class Failed:
    error: ImpastoError


Event = Queued | Started | Progress | Preview | Result | Failed
