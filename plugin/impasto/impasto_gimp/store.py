"""impasto.json in GIMP's own folder: the server address last used, and the token last used with each
address from the dialog.

GIMP keeps every argument as last values, globally and in the image (a persistent parasite, so inside
XCF files that may be shared): never the token. Tokens live here instead, in a file only its owner can
read, and go only to the server they were typed for.
"""

import json
import os

from gi.repository import Gimp

from .local_server import local_address
from .remote import split_token

# Kept in place of the own server's address, which impasto-server.json may move to another port.
OWN_SERVER = "own server"


def settings_file() -> str:
    return os.path.join(Gimp.directory(), "impasto.json")


def _saved() -> dict:
    try:
        with open(settings_file()) as f:
            saved = json.load(f)
        return saved if isinstance(saved, dict) else {}
    except (OSError, ValueError):
        return {}


def remembered_address() -> str:
    """The last address used, else $IMPASTO_SERVER, else the address of the plug-in's own server (as
    impasto-server.json says now)."""
    last = _saved().get("server")
    if last == OWN_SERVER:
        return local_address()
    return last or os.environ.get("IMPASTO_SERVER") or local_address()


def server_address(config: Gimp.ProcedureConfig) -> str:
    """The server field as typed, else the last address used."""
    return config.get_property("server").strip() or remembered_address()


def token_for(address: str, typed: str) -> str | None:
    """A pairing string's own token, else the token `typed` in the token field (or passed by a script),
    else the token remembered for this address (never another server's)."""
    kept, token = split_token_leniently(address)
    return token or typed or remembered_token(kept)


def remembered_token(address: str) -> str | None:
    """The token last used with `address` from the dialog, or None."""
    tokens = _saved().get("tokens")
    return tokens.get(address) if isinstance(tokens, dict) else None


def remember(address: str, token: str | None = None) -> None:
    """The last address used; with a token, that token for this address (the file is this user's only).
    A pairing string is kept without its token, which is kept with the others; the plug-in's own server
    as OWN_SERVER, wherever it is."""
    address, own = split_token_leniently(address)
    token = own or token
    saved = _saved()
    saved["server"] = OWN_SERVER if address == local_address() else address
    if token:
        tokens = saved.get("tokens") if isinstance(saved.get("tokens"), dict) else {}
        tokens[address] = token
        saved["tokens"] = tokens
    try:
        descriptor = os.open(settings_file(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as f:
            json.dump(saved, f)
    except OSError:
        pass  # remembering is a convenience; the run itself succeeded


def forget_secrets(config: Gimp.ProcedureConfig) -> None:
    """GIMP saves the arguments as last values, globally and in the image (inside XCF files that may be
    shared): the token field goes, and so does a pairing string's token in the Server field."""
    config.set_property("token", "")
    server = config.get_property("server")
    config.set_property("server", split_token_leniently(server)[0])


def split_token_leniently(address: str) -> tuple[str, str | None]:
    """`split_token`, and for a pairing string cut short in copying, its address alone."""
    try:
        return split_token(address)
    except ValueError:
        return address.split("?", 1)[0], None
