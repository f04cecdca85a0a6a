"""Where `impasto stylize` runs its jobs: in this process (the server's own jobs layer, one model for
every file) or on an impasto-server (one connection for every file). Both take the same inputs and give
the same events (`impasto.protocol`), so the batch does not care which it has."""

from __future__ import annotations

import argparse
import dataclasses
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

from .. import client as network
from ..protocol import Event, Failed, Image, ImpastoError, JobPlan, Limits, Parameters, Result
from .batch import JobInputs, sized_header


class LocalJob:
    """A job of the in-process jobs layer, seen as a client sees a remote one."""

    def __init__(self) -> None:
        self.cancel_event = threading.Event()
        self.items: queue.Queue[Event] = queue.Queue()

    def events(self) -> Iterator[Event]:
        while not isinstance(event := self.items.get(), Result | Failed):
            yield event
        if isinstance(event, Failed):
            raise event.error
        yield event

    def cancel(self) -> None:
        self.cancel_event.set()


class LocalRunner:
    """The same jobs layer as the server's, in this process: one way to check, decode and run a job.
    The model is loaded once, and every file of a batch is one job through the same `Jobs`."""

    where = ""

    def __init__(self, args: argparse.Namespace):
        from ..engine.device import host_memory_bytes
        from ..engine.loading import load_engine
        from ..jobs import Expert, Jobs
        from ..library import StyleLibrary

        self.expert = Expert(
            recipe=args.recipe,
            optimizer=args.optimizer,
            init="noise" if args.init == "noise" else "content",
            memory_budget=args.memory_budget,
        )
        self.init_file = args.init not in ("content", "noise")  # the last upload is the --init image
        engine = load_engine(args.device, args.weights, args.precision)
        engine.warm_up()  # as the server does: on a new machine, measures its pace for the plans
        memory = host_memory_bytes()
        # This machine's own limits: the whole host, no network to protect it from.
        limits = Limits(
            max_size=1 << 15,
            max_queue=1,
            max_iterations=1_000_000,
            max_styles=64,
            max_request_bytes=memory,
            max_inflight_bytes=memory,
        )
        self.jobs = Jobs([engine], StyleLibrary(args.styles_dir), limits)

    def start(self, content: Image, inputs: JobInputs, label: str) -> LocalJob:
        from ..jobs import Request

        uploads = [image.header for image in inputs.uploads]
        expert = self.expert
        if self.init_file:
            expert = dataclasses.replace(expert, init_upload=len(uploads) - 1)
        parameters = Parameters(content.header, inputs.styles, tuple(uploads), inputs.settings)
        upload = self.jobs.admit(Request(parameters, expert, labels=(label, *inputs.labels)))
        for index, image in enumerate([content, *inputs.uploads]):
            upload.add(index, image.data)
        job = LocalJob()
        self.jobs.submit(upload, job.items.put, job.cancel_event)
        return job

    def plan(self, content: Image, inputs: JobInputs) -> JobPlan:
        from ..jobs import Request

        uploads = tuple(sized_header(image) for image in inputs.uploads)
        parameters = Parameters(sized_header(content), inputs.styles, uploads, inputs.settings)
        return self.jobs.plan(Request(parameters, self.expert))

    def close(self) -> None:
        self.jobs.close(grace_seconds=0)


class RemoteRunner:
    """Jobs on one impasto-server, through one connection."""

    def __init__(self, args: argparse.Namespace, address: str | None, full_size: bool = False):
        """`full_size`: the jobs will ask for it, so the server must be able to (ImpastoError if not)."""
        self.client = connect(args, address)
        self.where = f" via {self.client.address}"
        if full_size:
            self.client.require_full_size()

    def start(self, content: Image, inputs: JobInputs, label: str) -> network.RemoteJob:
        return self.client.stylize(content, inputs.styles, inputs.settings, inputs.uploads)

    def plan(self, content: Image, inputs: JobInputs) -> JobPlan:
        uploads = [sized_header(image) for image in inputs.uploads]
        return self.client.plan(sized_header(content), inputs.styles, inputs.settings, uploads)

    def close(self) -> None:
        self.client.close()


Runner = LocalRunner | RemoteRunner


def connect(args: argparse.Namespace, address: str | None) -> network.Client:
    """A connection as the command line's --token, --token-file, --tls-ca and --insecure say."""
    token = args.token
    if args.token_file is not None:
        token = args.token_file.read_text().strip()
    return network.Client(address, token=token, tls_ca=args.tls_ca, insecure=args.insecure)


def own_failure(error: Exception, content: Path) -> bool:
    """A failure of this file alone (unreadable, or refused for what it holds), not one that every file
    of a batch would meet."""
    if isinstance(error, ImpastoError):
        return error.refused and (str(content) in error.detail or "content image" in error.detail)
    return isinstance(error, ValueError) and str(content) in str(error)
