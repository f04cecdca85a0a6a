"""The style library: imports, metadata, safe ids, saved styles, the catalogue and the Gram cache."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from helpers import gradient_image, running_server
from impasto.catalogue import fetch, load_catalogue
from impasto.client import Client, Image, ServerError, Settings, StyleSpec
from impasto.engine import Engine, Options, Style
from impasto.engine.gram_cache import GramCache
from impasto.library import InvalidStyleId, StyleExists, StyleLibrary, slug
from impasto.server.main import styles_main

FAST = Settings(size=48, iterations=3, preview_seconds=-1)


@pytest.fixture
def library(tmp_path: Path, images: Path) -> StyleLibrary:
    library = StyleLibrary(tmp_path / "styles", cache_dir=tmp_path / "cache")
    library.import_folder(images / "styles")
    return library


def test_import_adds_every_image_once(tmp_path: Path, images: Path):
    library = StyleLibrary(tmp_path / "styles", cache_dir=tmp_path / "cache")
    first = dict(library.import_folder(images / "styles"))
    assert len(first) == 8 and all(outcome.startswith("added") for outcome in first.values())
    again = dict(library.import_folder(images / "styles"))
    assert all(outcome.startswith("skipped") for outcome in again.values())
    assert {p.id for p in library.presets()} >= {"starry-night", "great-wave-off-kanagawa", "the-scream"}


def test_import_reports_broken_files_and_keeps_metadata(tmp_path: Path, images: Path):
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(images / "styles" / "udnie.jpg", source / "Udnie.jpg")
    (source / "Udnie.json").write_text(
        json.dumps({"title": "Udnie", "artist": "Francis Picabia", "year": "1913"})
    )
    (source / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    library = StyleLibrary(tmp_path / "styles", cache_dir=tmp_path / "cache")
    report = dict(library.import_folder(source))
    assert report["Udnie.jpg"] == "added as 'udnie'"
    assert report["broken.png"].startswith("failed") and "not a readable image" in report["broken.png"]
    preset = library.find("udnie")
    assert (preset.artist, preset.year, preset.title) == ("Francis Picabia", "1913", "Udnie")


@pytest.mark.parametrize(
    "bad", ["../udnie", "..", "udnie/../udnie", "/etc/passwd", "Udnie", "ü", "", "a" * 200]
)
def test_ids_that_are_not_slugs_are_refused(library: StyleLibrary, bad: str):
    with pytest.raises(InvalidStyleId):
        library.find(bad)


def test_symlinks_and_odd_names(library: StyleLibrary, tmp_path: Path, images: Path):
    outside = tmp_path / "outside.jpg"
    shutil.copy(images / "styles" / "udnie.jpg", outside)
    (library.folder / "sneaky.jpg").symlink_to(outside)
    shutil.copy(images / "styles" / "udnie.jpg", library.folder / "Öl-Gemälde ☀ 1913.jpg")
    ids = {p.id for p in library.presets()}
    assert "sneaky" not in ids
    assert "ol-gemalde-1913" in ids
    with pytest.raises(KeyError):
        library.find("sneaky")


def test_saving_checks_the_image_and_the_name(library: StyleLibrary, images: Path):
    data = (images / "styles" / "water-lilies.jpg").read_bytes()
    assert library.save("My Lilies", data).id == "my-lilies"
    assert (library.folder / "my-lilies.jpg").read_bytes() == data
    with pytest.raises(StyleExists):
        library.save("my lilies", data)
    with pytest.raises(InvalidStyleId):
        library.save("../..", data)
    with pytest.raises(ValueError, match="not a readable image"):
        library.save("garbage", b"not an image")


def test_thumbnails_are_small_and_cached_on_disk(library: StyleLibrary, tmp_path: Path):
    preset = library.find("starry-night")
    first = library.thumbnail(preset)
    assert len(list((tmp_path / "cache" / "thumbnails").glob("*.png"))) == 1
    fresh = StyleLibrary(library.folder, cache_dir=tmp_path / "cache")
    assert fresh.thumbnail(preset) == first


def test_a_preset_file_replaced_on_disk_is_read_again(library: StyleLibrary, images: Path):
    before = library.load("udnie")
    assert library.load("udnie").size == before.size
    shutil.copyfile(images / "styles" / "the-scream.jpg", library.find("udnie").path)
    after = library.load("udnie")
    assert after.size != before.size and after.size == library.load("the-scream").size


def test_grpc_listing_new_files_saved_styles_and_unknown_ids(
    library: StyleLibrary, images: Path, tmp_path: Path
):
    (library.folder / "starry-night.json").write_text(
        json.dumps(
            {
                "title": "The Starry Night",
                "artist": "Vincent van Gogh",
                "year": "1889",
                "licence": "Public domain",
                "strength": 1.5,
            }
        )
    )
    with running_server("--styles-dir", str(library.folder)) as address, Client(address) as client:
        presets = {p.id: p for p in client.styles()}
        starry = presets["starry-night"]
        assert (starry.title, starry.artist, starry.year, starry.recommended_strength) == (
            "The Starry Night",
            "Vincent van Gogh",
            "1889",
            1.5,
        )
        assert starry.thumbnail_png.startswith(b"\x89PNG")

        shutil.copy(images / "styles" / "udnie.jpg", library.folder / "new-arrival.jpg")
        assert "new-arrival" in {p.id for p in client.styles()}  # no restart

        content = Image.from_file(images / "content" / "camera.png")
        upload = Image.from_file(images / "styles" / "composition-vii.jpg")
        job = client.stylize(content, [StyleSpec(image=upload, save_as="Kandinsky VII")], FAST)
        list(job.events())
        job = client.stylize(content, [StyleSpec(preset="kandinsky-vii")], FAST)
        list(job.events())
        assert job.result is not None

        for spec, code in [
            (StyleSpec(image=upload, save_as="kandinsky-vii"), grpc.StatusCode.ALREADY_EXISTS),
            (StyleSpec(image=upload, save_as="???"), grpc.StatusCode.INVALID_ARGUMENT),
            (StyleSpec(preset="no-such-style"), grpc.StatusCode.NOT_FOUND),
            (StyleSpec(preset="../styles/udnie"), grpc.StatusCode.INVALID_ARGUMENT),
        ]:
            with pytest.raises(ServerError) as caught:
                list(client.stylize(content, [spec], FAST).events())
            assert caught.value.code == code, (spec, caught.value)


def test_catalogue_has_at_least_12_public_domain_paintings():
    entries = load_catalogue()
    assert len(entries) >= 12
    for entry in entries:
        assert slug(entry["id"]) == entry["id"]
        assert all(entry.get(k) for k in ("title", "artist", "year", "licence", "source_url", "commons_file"))
        assert entry["source_url"].startswith("https://commons.wikimedia.org/wiki/File:")
    assert len({e["artist"] for e in entries}) >= 10


@pytest.fixture
def web(images: Path) -> Iterator[str]:
    """A loopback web server with the test styles, standing in for Wikimedia Commons."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(images / "styles"))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_fetch_reports_each_style(tmp_path: Path, web: str):
    library = StyleLibrary(tmp_path / "styles", cache_dir=tmp_path / "cache")
    entries = [
        {"id": "the-scream", "title": "The Scream", "artist": "Edvard Munch", "url": f"{web}/the-scream.jpg"},
        {"id": "missing", "title": "Missing", "url": f"{web}/no-such-file.jpg"},
        {"id": "not-an-image", "title": "Text", "url": f"{web}/../SOURCES.md"},
        {"id": "unreachable", "title": "Nowhere", "url": "http://127.0.0.1:9/x.jpg"},
    ]
    report = dict(fetch(library, entries, timeout=5))
    assert report["the-scream"] == "added" and library.find("the-scream").artist == "Edvard Munch"
    assert "HTTP 404" in report["missing"]
    assert report["not-an-image"].startswith("failed")
    assert "cannot download" in report["unreachable"]
    assert dict(fetch(library, entries[:1]))["the-scream"] == "already in the library"


def test_styles_command_imports_and_lists(tmp_path: Path, images: Path, capsys):
    folder = str(tmp_path / "styles")
    assert styles_main(["--styles-dir", folder, "import", str(images / "styles")]) == 0
    assert styles_main(["--styles-dir", folder, "list"]) == 0
    assert "water-lilies" in capsys.readouterr().out
    assert styles_main(["--styles-dir", folder, "import", str(tmp_path / "nowhere")]) == 2


# ---- the Gram cache ----------------------------------------------------------------------------------

CONTENT = gradient_image(48, 64, seed=0)
STYLE = gradient_image(64, 64, seed=9).flip(-1)
OPTIONS = Options(size=184, iterations=2)  # two scales


def cached_engine(original_weights, directory: Path, **limits) -> Engine:
    return Engine(original_weights, torch.device("cpu"), gram_cache=GramCache(directory, **limits))


def test_a_cache_hit_skips_the_style_pass_with_a_bit_identical_result(original_weights, tmp_path: Path):
    engine = cached_engine(original_weights, tmp_path / "grams")
    first = engine.stylize(CONTENT, [Style(STYLE)], OPTIONS)
    assert (engine.gram_cache.hits, engine.gram_cache.misses) == (0, 2)  # one per scale
    second = engine.stylize(CONTENT, [Style(STYLE)], OPTIONS)
    assert (engine.gram_cache.hits, engine.gram_cache.misses) == (2, 2)
    assert torch.equal(first, second)
    uncached = Engine(original_weights, torch.device("cpu")).stylize(CONTENT, [Style(STYLE)], OPTIONS)
    assert torch.equal(first, uncached)

    restarted = cached_engine(original_weights, tmp_path / "grams")  # a new process: from disk
    assert torch.equal(restarted.stylize(CONTENT, [Style(STYLE)], OPTIONS), first)
    assert (restarted.gram_cache.hits, restarted.gram_cache.misses) == (2, 0)


def test_a_changed_style_image_or_setting_misses(original_weights, tmp_path: Path):
    engine = cached_engine(original_weights, tmp_path / "grams")
    engine.stylize(CONTENT, [Style(STYLE)], OPTIONS)
    changed = STYLE.clone()
    changed[0, 0, 0, 0] = 1 - changed[0, 0, 0, 0]
    engine.stylize(CONTENT, [Style(changed)], OPTIONS)
    assert (engine.gram_cache.hits, engine.gram_cache.misses) == (0, 4)
    engine.stylize(CONTENT, [Style(STYLE)], Options(size=184, iterations=2, style_scale=0.5))
    assert engine.gram_cache.hits == 0


def test_the_cache_stays_within_its_bounds(original_weights, tmp_path: Path):
    engine = cached_engine(
        original_weights, tmp_path / "grams", max_disk_bytes=6 << 20, max_memory_bytes=4 << 20
    )
    for seed in range(4):
        engine.stylize(CONTENT, [Style(gradient_image(40, 40, seed=seed))], Options(size=48, iterations=1))
    on_disk = sum(p.stat().st_size for p in (tmp_path / "grams").glob("*.pt"))
    assert 0 < on_disk <= 6 << 20
    assert engine.gram_cache._memory_bytes <= 4 << 20
