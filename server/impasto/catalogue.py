"""The built-in catalogue of public-domain paintings, and fetching it into a style library."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .library import MAX_STYLE_BYTES, StyleExists, StyleLibrary

CATALOGUE = Path(__file__).with_name("catalogue.json")
DOWNLOAD_WIDTH = 2048  # Commons scales the original down to this width; plenty for a style image
USER_AGENT = "Impasto/0.1 (neural style transfer for GIMP; fetches its public-domain style catalogue)"


def load_catalogue(path: Path = CATALOGUE) -> list[dict]:
    return json.loads(path.read_text())["styles"]


def download_url(entry: dict) -> str:
    if "url" in entry:
        return entry["url"]
    name = urllib.parse.quote(entry["commons_file"])
    return f"https://commons.wikimedia.org/wiki/Special:FilePath/{name}?width={DOWNLOAD_WIDTH}"


def _download(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data = response.read(MAX_STYLE_BYTES + 1)
    if len(data) > MAX_STYLE_BYTES:
        raise ValueError(f"the download is over {MAX_STYLE_BYTES:,} bytes")
    return data


def fetch(
    library: StyleLibrary,
    entries: list[dict] | None = None,
    download: Callable[[str, float], bytes] = _download,
    timeout: float = 60.0,
) -> list[tuple[str, str]]:
    """Downloads each catalogue style not yet in the library; returns (id, outcome) per style."""
    report = []
    have = {preset.id for preset in library.presets()}
    for entry in entries if entries is not None else load_catalogue():
        style_id = entry["id"]
        if style_id in have:
            report.append((style_id, "already in the library"))
            continue
        metadata = {k: entry[k] for k in ("title", "artist", "year", "licence", "source_url") if k in entry}
        try:
            data = download(download_url(entry), timeout)
            library.save(style_id, data, metadata)
            report.append((style_id, "added"))
        except urllib.error.HTTPError as error:
            report.append((style_id, f"failed: the server answered HTTP {error.code} {error.reason}"))
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", error)
            report.append((style_id, f"failed: cannot download ({reason}); is the internet reachable?"))
        except StyleExists:
            report.append((style_id, "already in the library"))
        except ValueError as error:
            report.append((style_id, f"failed: {error}"))
    return report
