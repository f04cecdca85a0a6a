"""The style library: imports, metadata, safe ids, saved styles, the catalogue and the Gram cache."""

from __future__ import annotations

import functools
import http.server
import json
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import gradient_image, running_server
from impasto.catalogue import fetch, load_catalogue
from impasto.client import Client
from impasto.engine import Engine, Options, Style
from impasto.engine.gram_cache import GramCache
from impasto.library import BUILTIN_STYLES_DIR, BrokenPreset, StyleExists, StyleLibrary
from impasto.protocol import NO_PREVIEWS, Image, ImpastoError, Kind, Settings, StyleChoice
from impasto.service.styles_command import styles_main
from impasto.style_files import InvalidStyleId, check_id, slug
from PIL import Image as PILImage

FAST = Settings(size=48, iterations=3, preview_seconds=NO_PREVIEWS)


@pytest.fixture
def library(tmp_path: Path, images: Path) -> StyleLibrary:
    library = StyleLibrary(tmp_path / "styles", cache_dir=tmp_path / "cache", builtin_folder=None)
    library.import_folder(images / "styles")
    return library


def test_import_adds_every_image_once(tmp_path: Path, images: Path):
    library = StyleLibrary(tmp_path / "styles", cache_dir=tmp_path / "cache", builtin_folder=None)
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
    library = StyleLibrary(tmp_path / "styles", cache_dir=tmp_path / "cache", builtin_folder=None)
    report = dict(library.import_folder(source))
    assert report["Udnie.jpg"] == "added as 'udnie'"
    assert report["broken.png"].startswith("failed") and "not a readable image" in report["broken.png"]
    preset = library.find("udnie")
    assert (preset.artist, preset.year, preset.title) == ("Francis Picabia", "1913", "Udnie")


@pytest.mark.parametrize(
    "bad",
    [
        "../udnie",
        "..",
        "udnie/../udnie",
        "/etc/passwd",
        "Udnie",
        "ü",
        "",
        "a" * 101,
        "udnie\n",
        "a" * 100_000,
    ],
)
def test_ids_that_are_not_slugs_are_refused(library: StyleLibrary, bad: str):
    with pytest.raises(InvalidStyleId) as caught:
        library.find(bad)
    assert len(str(caught.value)) < 200  # a client's string is echoed shortened, never whole


def test_ids_are_matched_whole_and_at_most_100_characters():
    assert check_id("a" * 100) == "a" * 100
    for bad in ("udnie\n", "a" * 101, "udnie\n\n"):
        with pytest.raises(InvalidStyleId, match="not a preset id"):
            check_id(bad)
    with pytest.raises(InvalidStyleId, match=r"'aaaa.*…'"):
        check_id("a" * 5000)


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
    before = library.load(library.find("udnie"))
    assert library.load(library.find("udnie")).size == before.size
    shutil.copyfile(images / "styles" / "the-scream.jpg", library.find("udnie").path)
    after = library.load(library.find("udnie"))
    assert after.size != before.size and after.size == library.load(library.find("the-scream")).size


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
        assert not starry.builtin  # the user's file overrides the built-in of that id

        shutil.copy(images / "styles" / "udnie.jpg", library.folder / "new-arrival.jpg")
        assert "new-arrival" in {p.id for p in client.styles()}  # no restart

        content = Image.from_file(images / "content" / "camera.png")
        upload = Image.from_file(images / "styles" / "composition-vii.jpg")
        job = client.stylize(content, [StyleChoice(upload=0, save_as_preset="Kandinsky VII")], FAST, [upload])
        list(job.events())
        job = client.stylize(content, [StyleChoice(preset_id="kandinsky-vii")], FAST)
        list(job.events())
        assert job.result is not None

        for spec, kind in [
            (StyleChoice(upload=0, save_as_preset="kandinsky-vii"), Kind.ALREADY_EXISTS),
            (StyleChoice(upload=0, save_as_preset="???"), Kind.INVALID),
            (StyleChoice(preset_id="no-such-style"), Kind.NOT_FOUND),
            (StyleChoice(preset_id="../styles/udnie"), Kind.INVALID),
        ]:
            with pytest.raises(ImpastoError) as caught:
                list(
                    client.stylize(
                        content, [spec], FAST, [upload] if spec.upload is not None else []
                    ).events()
                )
            assert caught.value.kind is kind, (spec, caught.value)


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
    library = StyleLibrary(tmp_path / "styles", cache_dir=tmp_path / "cache", builtin_folder=None)
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


# ---- built-in presets and the user's folder -------------------------------------------------------


def test_built_in_presets_are_public_domain_paintings_with_sources(tmp_path: Path):
    library = StyleLibrary(tmp_path / "not-made-yet", cache_dir=tmp_path / "cache")
    assert not library.user_folder_exists
    presets = library.presets()
    assert len(presets) >= 10 and all(p.builtin for p in presets)
    assert {"starry-night", "the-scream", "great-wave-off-kanagawa"} <= {p.id for p in presets}
    for preset in presets:
        assert all((preset.title, preset.artist, preset.year, preset.licence, preset.source_url)), preset
        assert preset.licence.startswith("Public domain") and preset.version
        with PILImage.open(preset.path) as image:
            assert image.format == "JPEG" and max(image.size) <= 1024 and "exif" not in image.info
    assert (BUILTIN_STYLES_DIR / "SOURCES.md").is_file()
    assert sum(f.stat().st_size for f in BUILTIN_STYLES_DIR.iterdir()) < 4_500_000
    assert not (tmp_path / "not-made-yet").exists()  # listing creates nothing


def test_the_user_folder_adds_and_overrides_and_is_the_only_one_written(tmp_path: Path, images: Path):
    builtin = tmp_path / "builtin"
    builtin.mkdir()
    for name in ("udnie.jpg", "the-scream.jpg"):
        shutil.copy(images / "styles" / name, builtin / name)
    (builtin / "udnie.json").write_text(json.dumps({"title": "Built-in Udnie"}))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in builtin.iterdir())
    library = StyleLibrary(tmp_path / "mine", cache_dir=tmp_path / "cache", builtin_folder=builtin)
    assert [(p.id, p.builtin, p.title) for p in library.presets()] == [
        ("the-scream", True, "The Scream"),
        ("udnie", True, "Built-in Udnie"),
    ]
    assert library.load(library.find("udnie")).size == (256, 256)

    with pytest.raises(StyleExists):  # a built-in's id is taken
        library.save("Udnie", (images / "styles" / "water-lilies.jpg").read_bytes())
    saved = library.save("Lilies", (images / "styles" / "water-lilies.jpg").read_bytes())
    assert saved.path.parent == (tmp_path / "mine").resolve() and not saved.builtin
    shutil.copy(images / "styles" / "starry-night.jpg", tmp_path / "mine" / "udnie.jpg")  # an override
    udnie = library.find("udnie")
    assert (
        not udnie.builtin
        and udnie.title == "Udnie"
        and library.load(library.find("udnie")).size == (203, 256)
    )
    assert [p.id for p in library.presets()] == ["lilies", "the-scream", "udnie"]
    report = dict(library.import_folder(images / "styles"))
    assert report["udnie.jpg"].startswith("skipped") and report["the-scream.jpg"].startswith("skipped")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in builtin.iterdir()) == before


def test_a_changed_file_gets_a_new_version(tmp_path: Path, images: Path):
    library = StyleLibrary(tmp_path / "styles", cache_dir=tmp_path / "cache", builtin_folder=None)
    preset = library.save("udnie", (images / "styles" / "udnie.jpg").read_bytes())
    assert library.find("udnie").version == preset.version
    shutil.copyfile(images / "styles" / "the-scream.jpg", preset.path)
    assert library.find("udnie").version != preset.version


def test_bmp_and_gif_presets(tmp_path: Path, images: Path):
    folder = tmp_path / "styles"
    folder.mkdir()
    painting = PILImage.open(images / "styles" / "udnie.jpg")
    painting.save(folder / "bitmap.bmp")
    painting.convert("P").save(folder / "animated.gif")
    library = StyleLibrary(folder, cache_dir=tmp_path / "cache", builtin_folder=None)
    assert [p.id for p in library.presets()] == ["animated", "bitmap"]
    assert (
        library.load(library.find("bitmap")).size == library.load(library.find("animated")).size == (256, 256)
    )
    saved = library.save("Copy", (folder / "animated.gif").read_bytes())
    assert saved.path.suffix == ".gif"


def half_copied_jpeg(images: Path) -> bytes:
    data = (images / "styles" / "starry-night.jpg").read_bytes()
    return data[: len(data) * 3 // 10]


def test_a_broken_file_is_named_logged_once_and_left_out(tmp_path: Path, images: Path, caplog):
    folder = tmp_path / "styles"
    folder.mkdir()
    shutil.copy(images / "styles" / "udnie.jpg", folder / "udnie.jpg")
    (folder / "half-copied.jpg").write_bytes(half_copied_jpeg(images))
    (folder / "also-half.jpg").write_bytes(half_copied_jpeg(images))
    library = StyleLibrary(folder, cache_dir=tmp_path / "cache", builtin_folder=None)
    assert [p.id for p in library.presets()] == [
        "also-half",
        "half-copied",
        "udnie",
    ]  # listing decodes nothing

    with caplog.at_level(logging.WARNING, logger="impasto.library"):
        with pytest.raises(BrokenPreset) as caught:
            library.load(library.find("half-copied"))
        message = str(caught.value)
        assert "half-copied" in message and str(tmp_path) not in message and "/" not in message
        with pytest.raises(BrokenPreset, match="also-half") as caught:
            library.thumbnail(library.find("also-half"))
        assert str(tmp_path) not in str(caught.value)
        assert [p.id for p in library.presets()] == ["udnie"]  # left out from now on
        with pytest.raises(BrokenPreset, match="half-copied") as again:  # and named when asked for
            library.load(library.find("half-copied"))
        assert str(tmp_path) not in str(again.value)
        with pytest.raises(KeyError):
            library.load(library.find("never-was"))
        assert library.load(library.find("udnie")).size == (256, 256)  # the rest works
        assert library.thumbnail(library.find("udnie")).startswith(b"\x89PNG")
    warnings = [r for r in caplog.records if r.name == "impasto.library"]
    assert len(warnings) == 2 and "half-copied" in warnings[0].getMessage()

    shutil.copyfile(images / "styles" / "the-scream.jpg", folder / "half-copied.jpg")  # copying finished
    assert library.load(library.find("half-copied")).size == (256, 201)
    assert [p.id for p in library.presets()] == ["half-copied", "udnie"]
    assert isinstance(caught.value, ValueError)  # an ImageError: what the service already maps


def test_listing_500_presets_is_cheap(tmp_path: Path, images: Path, monkeypatch: pytest.MonkeyPatch):
    folder = tmp_path / "styles"
    folder.mkdir()
    data = (images / "styles" / "udnie.jpg").read_bytes()
    for index in range(500):
        (folder / f"style-{index:03}.jpg").write_bytes(data if index % 50 else data[:100])
        if index % 2:
            (folder / f"style-{index:03}.json").write_text(json.dumps({"title": f"Style {index}"}))
    library = StyleLibrary(folder, cache_dir=tmp_path / "cache", builtin_folder=None)
    with monkeypatch.context() as patch:
        # Cheap means no image is opened: a listing reads names, sizes and metadata only.
        patch.setattr(PILImage, "open", lambda *args, **kwargs: pytest.fail("a listing decoded an image"))
        assert len(library.presets()) == 500
        assert library.find("style-499").title == "Style 499"


def test_metadata_strings_are_bounded(tmp_path: Path, images: Path):
    folder = tmp_path / "styles"
    folder.mkdir()
    shutil.copy(images / "styles" / "udnie.jpg", folder / "udnie.jpg")
    shutil.copy(images / "styles" / "udnie.jpg", folder / "huge.jpg")
    metadata = {
        "title": "T" * 20_000,  # the file stays under the 64 KiB read for metadata
        "artist": "A" * 1000,
        "year": ["1913"],
        "licence": "line one\nline two",
        "source_url": "https://example.org/" + "x" * 10_000,
        "strength": "nan",
    }
    (folder / "udnie.json").write_text(json.dumps(metadata))
    (folder / "huge.json").write_text(json.dumps({"title": "Huge", "pad": "x" * 1_000_000}))
    library = StyleLibrary(folder, cache_dir=tmp_path / "cache", builtin_folder=None)
    udnie = library.find("udnie")
    assert len(udnie.title) <= 200 and len(udnie.artist) <= 200 and len(udnie.source_url) <= 500
    assert udnie.year == "" and udnie.licence == "line one line two" and udnie.recommended_strength == 0
    assert library.find("huge").title == "Huge"  # a metadata file that large is not read


def test_saves_never_follow_a_symbolic_link(tmp_path: Path, images: Path):
    folder = tmp_path / "styles"
    folder.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    victims = [outside / name for name in ("image", "metadata", "partial")]
    for victim in victims:
        victim.write_bytes(b"precious")
    (folder / "evil.jpg").symlink_to(victims[0])
    (folder / "evil.json").symlink_to(victims[1])
    (folder / f".evil.jpg.{os.getpid()}.partial").symlink_to(victims[2])  # the old, predictable name
    library = StyleLibrary(folder, cache_dir=tmp_path / "cache", builtin_folder=None)
    data = (images / "styles" / "udnie.jpg").read_bytes()
    preset = library.save("evil", data, {"title": "Evil"})
    assert all(victim.read_bytes() == b"precious" for victim in victims)
    assert not (folder / "evil.jpg").is_symlink() and (folder / "evil.jpg").read_bytes() == data
    assert preset.title == "Evil" and not (folder / "evil.json").is_symlink()
    leftovers = [p.name for p in folder.iterdir() if p.name.endswith(".partial") and not p.is_symlink()]
    assert leftovers == []


def test_names_are_bounded_and_echoed_short(tmp_path: Path, images: Path):
    library = StyleLibrary(tmp_path / "styles", cache_dir=tmp_path / "cache", builtin_folder=None)
    data = (images / "styles" / "udnie.jpg").read_bytes()
    for name in ("n" * 101, "!" * 10_000):
        with pytest.raises(InvalidStyleId) as caught:
            library.save(name, data)
        assert len(str(caught.value)) < 200
    assert library.save("n" * 100, data).id == "n" * 100


# ---- the Gram cache ----------------------------------------------------------------------------------

CONTENT = gradient_image(48, 64, seed=0)
STYLE = gradient_image(64, 64, seed=9).flip(-1)
OPTIONS = Options(size=184, iterations=2)  # two scales


def cached_engine(original_weights, directory: Path, **limits) -> Engine:
    return Engine(original_weights, torch.device("cpu"), gram_cache=GramCache(directory, **limits))


def test_a_cache_hit_skips_the_style_pass_with_a_bit_identical_result(original_weights, tmp_path: Path):
    engine = cached_engine(original_weights, tmp_path / "grams")
    scales = len(engine.plan(tuple(CONTENT.shape[2:]), [tuple(STYLE.shape[2:])], OPTIONS).scales)
    first = engine.stylize(CONTENT, [Style(STYLE)], OPTIONS)
    assert scales > 1 and (engine.gram_cache.hits, engine.gram_cache.misses) == (0, scales)  # one a scale
    second = engine.stylize(CONTENT, [Style(STYLE)], OPTIONS)
    assert (engine.gram_cache.hits, engine.gram_cache.misses) == (scales, scales)
    assert torch.equal(first, second)
    uncached = Engine(original_weights, torch.device("cpu")).stylize(CONTENT, [Style(STYLE)], OPTIONS)
    assert torch.equal(first, uncached)

    restarted = cached_engine(original_weights, tmp_path / "grams")  # a new process: from disk
    assert torch.equal(restarted.stylize(CONTENT, [Style(STYLE)], OPTIONS), first)
    assert (restarted.gram_cache.hits, restarted.gram_cache.misses) == (scales, 0)


def test_a_changed_style_image_or_setting_misses(original_weights, tmp_path: Path):
    engine = cached_engine(original_weights, tmp_path / "grams")
    scales = len(engine.plan(tuple(CONTENT.shape[2:]), [tuple(STYLE.shape[2:])], OPTIONS).scales)
    engine.stylize(CONTENT, [Style(STYLE)], OPTIONS)
    changed = STYLE.clone()
    changed[0, 0, 0, 0] = 1 - changed[0, 0, 0, 0]
    engine.stylize(CONTENT, [Style(changed)], OPTIONS)
    assert (engine.gram_cache.hits, engine.gram_cache.misses) == (0, 2 * scales)
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
