"""The one table of what can go wrong: each kind's gRPC status and the sentence a person reads.

The server ends a failed call with the kind's status, its own detail (a sentence: what went wrong and
what to change) as the status message, and the kind's name in the trailing metadata under `KIND_KEY`.
The client rebuilds the same `ImpastoError` from those, so the user reads the server's own words. A
status that carries no kind was written by gRPC, the network or a proxy, not by an impasto-server: it is
told by its status alone (`for_status`), and whatever words came with it are not shown.
"""

from __future__ import annotations

import enum

KIND_KEY = "impasto-error-kind"  # trailing metadata: the Kind's name, lower case


class Kind(enum.Enum):
    """What kind of failure; (gRPC status name, the sentence around the detail on a client, where
    `{server}` is "the server at HOST:PORT" and `{address}` that address)."""

    INVALID = ("INVALID_ARGUMENT", "{server} refused the job: {detail}")
    NOT_FOUND = ("NOT_FOUND", "{server} refused the job: {detail}")
    ALREADY_EXISTS = ("ALREADY_EXISTS", "{server} refused the job: {detail}")
    BROKEN_PRESET = ("FAILED_PRECONDITION", "{server} cannot use that preset: {detail}")
    TOO_LARGE = ("RESOURCE_EXHAUSTED", "{server} refused the job: {detail}")  # over one of its limits
    BUSY = ("RESOURCE_EXHAUSTED", "{server} cannot take the job now: {detail}")  # full now; try again
    OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED", "{server} does not have the memory for the job: {detail}")
    TIMEOUT = ("DEADLINE_EXCEEDED", "{server} gave up on the job: {detail}")
    UNAUTHENTICATED = ("UNAUTHENTICATED", "{server} did not accept the token: {detail}")
    CANCELLED = ("CANCELLED", "the job was cancelled{detail_after}")
    UNAVAILABLE = ("UNAVAILABLE", "{server} is not available now: {detail}")  # shutting down
    UNREACHABLE = ("UNAVAILABLE", "cannot reach an Impasto server at {address}{detail_in_brackets}")
    INCOMPATIBLE = ("UNIMPLEMENTED", "{server} is not compatible with this client: {detail}")
    BUG = ("INTERNAL", "{server} failed: {detail}; its log has details")
    # Found by the client: it failed itself, so the server's log knows nothing of it.
    CLIENT_BUG = ("INTERNAL", "this program failed while talking to {server}: {detail}; please report it")
    # Found by the client before anything is sent: the token would cross the network in clear.
    INSECURE = (
        "FAILED_PRECONDITION",
        "not sending the token in clear to {address}: anyone on the network could read it",
    )
    # Found by the client before anything is sent: the certificate is not the pairing string's.
    NOT_PAIRED = (
        "UNAUTHENTICATED",
        "the server at {address} is not the one this was paired with: its certificate is not the one the "
        "pairing string names, so nothing was sent to it",
    )

    @property
    def status(self) -> str:
        """The gRPC status code's name (grpc.StatusCode[...] on the server, grpclib's Status[...] here)."""
        return self.value[0]

    @property
    def retry_elsewhere(self) -> bool:
        """Another server (or this one later) may well take the same job."""
        return self in (Kind.UNAVAILABLE, Kind.UNREACHABLE)

    @property
    def refusal(self) -> bool:
        """The request as it is will not be taken; sending it again unchanged will not help."""
        return self in (Kind.INVALID, Kind.NOT_FOUND, Kind.ALREADY_EXISTS, Kind.BROKEN_PRESET, Kind.TOO_LARGE)


# What a status means when gRPC, the network, a proxy or an older server (none of them says the kind)
# ended the call: (kind, detail).
_STATUS_ALONE = {
    "INVALID_ARGUMENT": (Kind.INVALID, "it gave no reason"),
    "NOT_FOUND": (Kind.NOT_FOUND, "it gave no reason"),
    "ALREADY_EXISTS": (Kind.ALREADY_EXISTS, "a preset of that name exists already"),
    "FAILED_PRECONDITION": (Kind.BROKEN_PRESET, "it gave no reason"),
    "CANCELLED": (Kind.CANCELLED, ""),
    "UNAVAILABLE": (Kind.UNREACHABLE, "the connection was lost or refused"),
    "DEADLINE_EXCEEDED": (
        Kind.TIMEOUT,
        "it did not answer in time; it may be busy or the network slow, so try again",
    ),
    "UNAUTHENTICATED": (Kind.UNAUTHENTICATED, "it wants a token"),
    "RESOURCE_EXHAUSTED": (
        Kind.INCOMPATIBLE,
        "a message was larger than this client accepts; install the same impasto release on both sides",
    ),
    "UNIMPLEMENTED": (
        Kind.INCOMPATIBLE,
        "it runs another version of impasto-server, or is not one; install the same impasto release on "
        "both sides",
    ),
    "PERMISSION_DENIED": (Kind.UNAUTHENTICATED, "it does not allow this; ask whoever runs it"),
}
_SOMETHING_FAILED = (Kind.BUG, "something between this client and the server failed")

# What to do, in the words of each front end, for the kinds where that depends on where the user is.
HINTS = {
    "cli": {
        Kind.UNREACHABLE: "start one there with `impasto-server`, or pass another address with --server",
        Kind.UNAUTHENTICATED: "give the server's token with --token-file FILE or $IMPASTO_TOKEN",
        Kind.NOT_FOUND: "`impasto styles --server ADDRESS` lists the presets",
        Kind.INSECURE: "use TLS (https://HOST:PORT, with --tls-ca CERT for a self-signed server), an SSH "
        "tunnel to 127.0.0.1, or --insecure if the network is private and you accept that",
        Kind.NOT_PAIRED: "if its secrets were renewed (--new-secrets), pass the string `impasto-server "
        "--remote` prints now with --server; if not, another machine may be answering at that address",
        Kind.OUT_OF_MEMORY: "--memory-budget sets the budget: `impasto stylize`'s for its own jobs, "
        "`impasto-server`'s for a server's",
    },
    "gimp": {
        Kind.UNREACHABLE: "check the Server field, or start the server there",
        Kind.UNAUTHENTICATED: "enter the server's token in the Token field",
        Kind.NOT_FOUND: "choose one of the server's presets, or a style image file",
        Kind.INSECURE: "use an https:// server (with its certificate in the TLS certificate field if it is "
        "self-signed), an SSH tunnel to 127.0.0.1, or tick “Send the token unencrypted” if the network "
        "is private and you accept that",
        Kind.NOT_PAIRED: "if its secrets were renewed, paste the string `impasto-server --remote` prints now "
        "into the Server field; if not, another machine may be answering at that address",
    },
}


class ImpastoError(Exception):
    """A failure with its kind and the detail that says what went wrong and what to change.

    `server`: the address of the server that failed, for the sentence; empty where the failure happened
    in this process (the server's own jobs layer, or the CLI's in-process jobs)."""

    def __init__(self, kind: Kind, detail: str = "", server: str = "", hint: str = ""):
        self.kind, self.detail, self.server, self.hint = kind, detail, server, hint
        super().__init__(self.sentence())

    def sentence(self, audience: str | None = None) -> str:
        """The whole sentence; with `audience` ("cli" or "gimp") followed by what to do there. Without a
        server (a job run in this process) it is the detail alone."""
        text = self.detail or self.kind.name.lower().replace("_", " ")
        if self.server:
            text = self.kind.value[1].format(
                server=f"the server at {self.server}",
                address=self.server,
                detail=self.detail,
                detail_after=f": {self.detail}" if self.detail else "",
                detail_in_brackets=f" ({self.detail})" if self.detail else "",
            )
        hint = self.hint or HINTS.get(audience or "", {}).get(self.kind, "")
        return f"{text}; {hint}" if hint else text

    def at(self, server: str) -> ImpastoError:
        """The same failure, told as coming from `server`."""
        return ImpastoError(self.kind, self.detail, server, self.hint)

    @property
    def cancelled(self) -> bool:
        return self.kind is Kind.CANCELLED

    @property
    def refused(self) -> bool:
        return self.kind.refusal

    @property
    def unavailable(self) -> bool:
        return self.kind.retry_elsewhere


def from_status(status: str, detail: str, kind_name: str | None, server: str) -> ImpastoError:
    """The error a call ended with: `kind_name` from the trailing metadata (an impasto-server's own
    words in `detail`), or none (gRPC's or a proxy's words: not shown)."""
    kind = _kind_named(kind_name)
    if kind is not None and kind.status == status:
        return ImpastoError(kind, detail, server)
    kind, said = _STATUS_ALONE.get(status, _SOMETHING_FAILED)
    return ImpastoError(kind, said, server)


def _kind_named(name: str | None) -> Kind | None:
    try:
        kind = Kind[name.upper()] if name else None
    except KeyError:
        return None  # a newer server's kind: told by its status
    return None if kind in CLIENT_KINDS else kind


CLIENT_KINDS = frozenset(
    {Kind.UNREACHABLE, Kind.INSECURE, Kind.NOT_PAIRED, Kind.CLIENT_BUG}
)  # found by a client; no server sends them
