"""The plug-in inside each real GIMP (3.0 and 3.2, see conftest.py), against a real impasto-server
on loopback.

Slow (a GIMP start is about 5 s): run alone with `pytest -m slow`. CI runs them.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from helpers import running_server, self_signed
from impasto.client import Client
from impasto.protocol import parse_address
from impasto.v1 import impasto_pb2 as pb
from impasto.v1 import impasto_pb2_grpc
from interactive import interactive_run
from wire import job_lines, outcome

pytestmark = pytest.mark.slow
QUICK = "size=48, iterations=3"


@pytest.fixture(scope="module")
def server_without_full_size(images: Path) -> Iterator[str]:
    """A server whose ServerInfo says it cannot paint at full size, as an older one's does."""
    with running_server("--styles-dir", str(images / "styles"), full_size=False) as address:
        yield address


@pytest.fixture(scope="module")
def tls_server(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A TLS server (self-signed certificate for localhost) that wants the token "s3cret":
    (https:// address, certificate)."""
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    flags = [
        "--styles-dir",
        str(images / "styles"),
        "--grace-seconds",
        "1",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    ]
    with running_server(*flags, token="s3cret") as address:
        yield f"https://localhost:{address.rpartition(':')[2]}", cert


class MisfitResultServer(impasto_pb2_grpc.StyleTransferServicer):
    """A server that answers every job with a result of 16 bytes that says it is `width`×`height` px,
    whatever the layer's size: one the plug-in must not trust."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height

    def GetServerInfo(self, request, context):  # noqa: N802 - the .proto's name
        return pb.ServerInfo(protocol_version=1, limits=pb.Limits(full_size=True))

    def ListStyles(self, request, context):  # noqa: N802
        return pb.ListStylesResponse(styles=[pb.StylePreset(id="udnie", title="Udnie")])

    def Stylize(self, requests, context):  # noqa: N802
        for _ in requests:
            pass  # the upload, read to its end
        header = pb.ImageHeader(
            format=pb.PIXEL_FORMAT_RGBA8, width=self.width, height=self.height, total_bytes=16
        )
        yield pb.StylizeEvent(result=pb.ResultChunk(header=header, data=bytes(16)))


@pytest.fixture(scope="module")
def misfit_servers() -> Iterator[dict[str, str]]:
    """Addresses of misfit servers for coffee.png (256×171 px): "small" answers 2×2 px, "short" the
    layer's size in 16 bytes."""
    servers, addresses = [], {}
    for name, size in (("small", (2, 2)), ("short", (256, 171))):
        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        impasto_pb2_grpc.add_StyleTransferServicer_to_server(MisfitResultServer(*size), server)
        addresses[name] = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        server.start()
        servers.append(server)
    try:
        yield addresses
    finally:
        for server in servers:
            server.stop(grace=None)


def test_a_result_that_does_not_fit_the_layer_is_an_execution_error(gimp, misfit_servers, images: Path):
    """A broken or foreign server's result, of another size or too few bytes (which GEGL would silently
    not write), is refused with a sentence, as GIMP shows an execution error, and the image is left as it
    was."""
    content = gimp.put(images / "content" / "coffee.png")
    out = gimp.run(f"""
        image = load({content!r})
        for name, server in {misfit_servers!r}.items():
            status, message = impasto(image, image.get_layers()[0], style="udnie", server=server, {QUICK})
            out[name] = [status, str(message)]
        out["layers"] = len(image.get_layers())
    """)
    assert "exception" not in out, out.get("exception")
    refusal = "The server sent a result that does not fit the layer ({}); nothing was changed."
    assert out["small"][0] == "execution-error" and refusal.format("2×2 px for 256×171 px") in out["small"][1]
    too_few = "16 bytes for 256×171 px, which take 175104"
    assert out["short"][0] == "execution-error" and refusal.format(too_few) in out["short"][1], out
    assert out["layers"] == 1


def test_the_pairing_string_is_all_the_server_field_needs(gimp, remote, images: Path):
    """Pasted into Server, the string paints; with another certificate's fingerprint nothing is sent."""
    string, server = remote
    pinned = parse_address(string).fingerprint
    impostor = string.replace(pinned, pinned[::-1])
    content = gimp.put(images / "content" / "coffee.png")
    jobs_before = server.log().count("job id=")
    out = gimp.run(f"""
        image = load({content!r})
        source = image.get_layers()[0]
        status, layer = impasto(image, source, style="udnie", server={string!r}, {QUICK})
        out["status"], out["name"] = status, layer.get_name() if status == "success" else str(layer)
        status, message = impasto(image, source, style="udnie", server={impostor!r}, {QUICK})
        out["impostor"] = [status, str(message)]
    """)
    assert "exception" not in out, out.get("exception")
    assert out["status"] == "success" and out["name"] == "Impasto: Udnie", out
    assert out["impostor"][0] == "execution-error" and "not the one" in out["impostor"][1], out
    assert parse_address(string).token not in out["impostor"][1]
    # One job reached the server: the paired one. The impostor's call never came (it sent nothing).
    assert server.log().count("job id=") == jobs_before + 1, server.log()[-3000:]


def test_tls_server_with_token_and_the_token_refused_in_clear(gimp, tls_server, images: Path):
    address, cert = tls_server
    content = gimp.put(images / "content" / "coffee.png")
    ca = gimp.put(cert)
    out = gimp.run(f"""
        image = load({content!r})
        source = image.get_layers()[0]
        tls = {{"server": {address!r}, "tls-ca": {ca!r}}}
        status, layer = impasto(image, source, style="udnie", token="s3cret", **tls, {QUICK})
        out["status"], out["name"] = status, layer.get_name() if status == "success" else str(layer)
        status, message = impasto(image, source, style="udnie", token="wrong", **tls, {QUICK})
        out["wrong"] = [status, str(message)]
        status, message = impasto(image, source, style="udnie", token="s3cret", **{{"server": {address!r}}}, {QUICK})
        out["untrusted"] = [status, str(message)]
        status, message = impasto(image, source, style="udnie", token="s3cret", server="192.0.2.1:50051", {QUICK})
        out["clear"] = [status, str(message)]
        out["layers"] = len(image.get_layers())
    """)
    assert "exception" not in out, out.get("exception")
    # A preset's layer is named after its title in the server's list: tests/data/styles has no .json
    # beside its images, so the title comes from the file name ("udnie.jpg": "Udnie").
    assert out["status"] == "success" and out["name"] == "Impasto: Udnie", out
    assert out["wrong"][0] == "execution-error" and "did not accept the token" in out["wrong"][1], out
    # The system's roots do not know a self-signed certificate: a TLS error, not a hang.
    assert out["untrusted"][0] == "execution-error" and "TLS" in out["untrusted"][1], out
    # A token to another machine over plain host:port is refused before anything is sent.
    assert out["clear"][0] == "execution-error" and "in clear to 192.0.2.1" in out["clear"][1], out
    assert out["layers"] == 2


def test_preset_and_style_file_make_new_layers_above_the_source(gimp, server: str, images: Path):
    content = gimp.put(images / "content" / "chelsea.png")
    style = gimp.put(images / "styles" / "udnie.jpg")
    out = gimp.run(f"""
        image = load({content!r})
        source = image.get_layers()[0]
        source.add_alpha()
        image.select_ellipse(Gimp.ChannelOps.REPLACE, 90, 35, 120, 90)
        source.edit_clear()  # a transparent hole, so that keeping alpha means something
        Gimp.Selection.none(image)
        before = pixels(source)
        out["transparent"] = before[3::4].count(0)
        status, layer = impasto(image, source, style="starry-night", server={server!r}, {QUICK})
        out["status"] = status
        after = pixels(layer)
        out["geometry"] = [layer.get_width(), layer.get_height(), *layer.get_offsets()[1:]]
        out["source_geometry"] = [source.get_width(), source.get_height(), *source.get_offsets()[1:]]
        opaque = [i for i in range(3, len(before), 4) if before[i] > 0]
        out["changed"] = sum(abs(after[i - 1] - before[i - 1]) for i in opaque) / len(opaque)
        out["alpha_kept"] = before[3::4] == after[3::4]
        out["source_untouched"] = pixels(source) == before
        status, second = impasto(image, source, **{{"style-file": {style!r}}}, server={server!r}, {QUICK})
        out["second_status"] = status
        out["names"] = [l.get_name() for l in image.get_layers()]
        out["source_name"] = source.get_name()
    """)
    assert "exception" not in out, out.get("exception")
    assert out["status"] == "success" and out["second_status"] == "success"
    assert out["geometry"] == out["source_geometry"] == [256, 170, 0, 0]  # tests/data/content/chelsea.png
    assert out["transparent"] > 7_000
    assert out["changed"] > 5 and out["alpha_kept"] and out["source_untouched"]
    # Each result lands directly above the source: the second between the first and the source.
    # A preset's layer takes its title ("starry-night.jpg": "Starry Night"), a style file's its name.
    assert out["names"] == ["Impasto: Starry Night", "Impasto: udnie", out["source_name"]]


def test_selection_limits_the_result(gimp, server: str, images: Path):
    content = gimp.put(images / "content" / "chelsea.png")
    out = gimp.run(f"""
        image = load({content!r})
        source = image.get_layers()[0]
        before = composite(image)
        image.select_rectangle(Gimp.ChannelOps.REPLACE, 60, 30, 120, 90)
        status, layer = impasto(image, source, style="udnie", server={server!r}, {QUICK})
        out["status"] = status
        out["has_mask"] = layer.get_mask() is not None
        after = composite(image)
        width = image.get_width()
        inside = outside = 0
        for index in range(0, len(before), 4):
            x, y = (index // 4) % width, (index // 4) // width
            differs = before[index:index + 3] != after[index:index + 3]
            if 60 <= x < 180 and 30 <= y < 120:
                inside += differs
            else:
                outside += differs
        out["inside"], out["outside"] = inside, outside
        # The new layer is selected, not its mask: Filters ▸ Repeat runs on the selected drawables.
        selected = image.get_selected_drawables()
        out["selected"] = [[type(d).__name__, d.get_id() == layer.get_id()] for d in selected]
        status, again = impasto(image, selected[0], style="udnie", server={server!r}, {QUICK})
        out["repeat"] = [status, again.get_name() if status == "success" else str(again)]
    """)
    assert "exception" not in out, out.get("exception")
    assert out["status"] == "success" and out["has_mask"]
    assert out["outside"] == 0, "pixels outside the selection changed"
    assert out["inside"] > 120 * 90 * 0.5
    assert out["selected"] == [["Layer", True]], out
    assert out["repeat"] == ["success", "Impasto: Udnie #1"], out  # GIMP numbers a second of a name


def test_a_selection_that_misses_the_layer_is_refused_before_any_job(gimp, images: Path):
    """A selection beside a small layer would mask its result away entirely: refused with what to do, at
    full size or not, before any server is asked (the one named here is down)."""
    content = gimp.put(images / "content" / "coffee.png")
    out = gimp.run(f"""
        image = load({content!r})
        small = Gimp.Layer.new(image, "Small", 20, 20, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
        image.insert_layer(small, None, 0)
        image.select_rectangle(Gimp.ChannelOps.REPLACE, 100, 100, 40, 40)
        out["runs"] = []
        for full_size in (False, True):
            status, message = impasto(image, small, style="udnie", server="127.0.0.1:9", **{{"full-size": full_size}})
            out["runs"].append([status, str(message)])
        out["layers"] = len(image.get_layers())
    """)
    assert "exception" not in out, out.get("exception")
    refusal = "The selection does not touch layer 'Small': select part of it, or Select ▸ None."
    assert out["runs"] == [["execution-error", refusal]] * 2, out
    assert out["layers"] == 2, out


def test_a_layer_whose_mask_is_selected_is_painted(gimp, server: str, images: Path):
    """GIMP passes the mask when it is the selected drawable (as Add Layer Mask leaves it): its layer is
    painted, as the Layers dialog shows one layer selected."""
    content = gimp.put(images / "content" / "coffee.png")
    out = gimp.run(f"""
        image = load({content!r})
        source = image.get_layers()[0]
        source.add_mask(source.create_mask(Gimp.AddMaskType.WHITE))
        status, layer = impasto(image, source.get_mask(), style="udnie", server={server!r}, {QUICK})
        out["run"] = [status, layer.get_name() if status == "success" else str(layer)]
        out["layers"] = [layer.get_name() for layer in image.get_layers()]
    """)
    assert "exception" not in out, out.get("exception")
    assert out["run"] == ["success", "Impasto: Udnie"], out
    assert out["layers"][0] == "Impasto: Udnie" and len(out["layers"]) == 2, out


def test_the_result_keeps_the_source_layers_mode_opacity_and_mask(gimp, server: str, images: Path):
    """A filter changes a layer in place, keeping its mode, opacity and mask: the new layer looks as the
    painted source would. A Multiply layer at 60 % whose mask hides its left half gives a Multiply layer at
    60 % whose mask hides that half; at full size with an elliptic selection, the mask is the box's part
    of the source's, hiding too what is outside the ellipse (the box's corners). A disabled mask hides
    nothing, and is not copied."""
    content = gimp.put(images / "content" / "chelsea.png")  # 256×170
    out = gimp.run(f"""
        image = load({content!r})
        source = image.get_layers()[0]
        source.set_mode(Gimp.LayerMode.MULTIPLY)
        source.set_opacity(60.0)
        image.select_rectangle(Gimp.ChannelOps.REPLACE, 128, 0, 128, 170)
        source.add_mask(source.create_mask(Gimp.AddMaskType.SELECTION))
        Gimp.Selection.none(image)
        out["multiply"] = int(Gimp.LayerMode.MULTIPLY)

        def looks(layer):  # mode, opacity, geometry, and its mask's middle row and top right corner
            mask, width, height = layer.get_mask(), layer.get_width(), layer.get_height()
            row = list(pixels(mask, 0, height // 2, width, 1)[::4]) if mask else None
            corner = pixels(mask, width - 1, 0, 1, 1)[0] if mask else None
            return [int(layer.get_mode()), layer.get_opacity(), width, height, *layer.get_offsets()[1:], row, corner]

        status, whole = impasto(image, source, style="udnie", server={server!r}, {QUICK})
        out["whole"] = [status, *looks(whole)]
        Gimp.context_set_antialias(False)  # the ellipse's mask all 0 or 255
        image.select_ellipse(Gimp.ChannelOps.REPLACE, 64, 40, 128, 80)
        status, box = impasto(image, source, style="udnie", server={server!r}, **{{"full-size": True}}, {QUICK})
        out["box"] = [status, *looks(box)]
        Gimp.Selection.none(image)
        source.set_apply_mask(False)
        status, unmasked = impasto(image, source, style="udnie", server={server!r}, {QUICK})
        out["unmasked"] = [status, *looks(unmasked)]
    """)
    assert "exception" not in out, out.get("exception")
    multiply = out["multiply"]
    assert out["whole"] == ["success", multiply, 60.0, 256, 170, 0, 0, [0] * 128 + [255] * 128, 255], out
    assert out["box"] == ["success", multiply, 60.0, 128, 80, 64, 40, [0] * 64 + [255] * 64, 0], out
    assert out["unmasked"] == ["success", multiply, 60.0, 256, 170, 0, 0, None, None], out


def test_a_layer_deleted_or_an_image_closed_meanwhile_is_a_sentence(gimp, images: Path):
    """The user may delete the layer or close the image while the dialog is open: what the dialog and the
    run read first (painted_box) says so, instead of failing in GIMP's calls."""
    content = gimp.put(images / "content" / "coffee.png")
    out = gimp.run(f"""
        {gimp.plug_in_modules()}
        from impasto_gimp.layers import painted_box
        image = load({content!r})
        extra = Gimp.Layer.new(image, "Extra", 20, 20, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
        image.insert_layer(extra, None, 0)
        image.remove_layer(extra)
        source = image.get_layers()[0]
        out["gone"] = []
        for which in ("layer", "image"):
            if which == "image":
                image.delete()
            try:
                out["gone"].append(str(painted_box(image, extra if which == "layer" else source, False)))
            except Exception as error:
                out["gone"].append(f"{{type(error).__name__}}: {{error}}")
    """)
    assert "exception" not in out, out.get("exception")
    gone = "ValueError: The image or layer was closed or deleted meanwhile; nothing was changed."
    assert out["gone"] == [gone, gone], out


def test_full_size_paints_the_layer_or_the_selection_box_at_its_own_size(
    gimp, server: str, server_without_full_size: str, images: Path, caplog
):
    """full-size: the layer at its own size (size ignored), or with a selection its bounding box, in a
    layer over that box; the server field takes several servers (one of them down here). A server that
    cannot paint at full size is refused before any job, not left to ignore the request."""
    caplog.set_level(logging.INFO, logger="impasto.jobs")
    content = gimp.put(images / "content" / "chelsea.png")
    servers = f"127.0.0.1:9,{server}"
    out = gimp.run(f"""
        image = load({content!r})
        image.scale(96, 64)
        source = image.get_layers()[0]
        quick = dict(style="udnie", size=48, iterations=3)
        status, full = impasto(image, source, server={servers!r}, **{{"full-size": True}}, **quick)
        out["full"] = [status, full.get_width(), full.get_height(), *full.get_offsets()[1:]]
        status, small = impasto(image, source, server={servers!r}, **quick)
        out["small"] = [status, small.get_width(), small.get_height()]
        out["differ"] = sum(a != b for a, b in zip(pixels(full), pixels(small)))
        image.select_rectangle(Gimp.ChannelOps.REPLACE, 10, 8, 40, 30)
        status, box = impasto(image, source, server={servers!r}, **{{"full-size": True}}, **quick)
        out["box"] = [status, box.get_width(), box.get_height(), *box.get_offsets()[1:], box.get_mask() is not None]
        status, message = impasto(image, source, server={server_without_full_size!r}, **{{"full-size": True}}, **quick)
        out["unable"] = [status, str(message)]
        out["layers"] = len(image.get_layers())
    """)
    assert "exception" not in out, out.get("exception")
    assert out["full"] == ["success", 96, 64, 0, 0], out
    assert out["small"] == ["success", 96, 64], out
    assert out["differ"] > 96 * 64, out  # painted at 96×64, not at 48×32 and scaled up
    assert out["box"] == ["success", 40, 30, 10, 8, True], out
    assert out["unable"][0] == "execution-error", out
    assert f"server at {server_without_full_size} is not compatible" in out["unable"][1]
    assert "cannot paint at the content's full size" in out["unable"][1]
    assert out["layers"] == 4
    # The job log's pixels are the working size's: 96×64 and 40×30 at full size, else 48×32. The server
    # without full size got no job.
    lines = job_lines(caplog.records)
    sizes = [(line.split(" pixels=")[1].split()[0], line.split(" size=")[1].split()[0]) for line in lines]
    assert sizes == [("6144", "full"), ("1536", "48"), ("1200", "full")], lines


def test_server_down_is_an_execution_error_naming_the_address(gimp, images: Path):
    content = gimp.put(images / "content" / "coffee.png")
    out = gimp.run(f"""
        image = load({content!r})
        status, message = impasto(image, image.get_layers()[0], style="udnie", server="127.0.0.1:9", {QUICK})
        out["status"], out["message"] = status, str(message)
        out["layers"] = len(image.get_layers())
    """)
    assert out["status"] == "execution-error"
    # In GIMP's words: the field to fix, never a command-line flag.
    assert "127.0.0.1:9" in out["message"] and "Server field" in out["message"] and "--" not in out["message"]
    assert out["layers"] == 1


def test_grayscale_image_and_offset_layer(gimp, server: str, images: Path):
    content = gimp.put(images / "content" / "camera.png")
    out = gimp.run(f"""
        image = load({content!r})
        out["gray"] = image.get_base_type() == Gimp.ImageBaseType.GRAY
        status, layer = impasto(image, image.get_layers()[0], style="starry-night", server={server!r}, {QUICK})
        out["status"], out["result_gray"] = status, layer.is_gray()

        small = Gimp.Layer.new(image, "small", 100, 80, Gimp.ImageType.GRAYA_IMAGE, 100, Gimp.LayerMode.NORMAL)
        image.insert_layer(small, None, 0)
        small.set_offsets(30, 20)
        small.get_buffer().set(Gegl.Rectangle.new(0, 0, 100, 80), "R'G'B'A u8",
                               pixels(image.get_layers()[-1], 30, 20, 100, 80))
        status, result = impasto(image, small, style="udnie", server={server!r}, {QUICK})
        out["offset_status"] = status
        out["offset_geometry"] = [result.get_width(), result.get_height(), *result.get_offsets()[1:]]
        out["names"] = [l.get_name() for l in image.get_layers()]
    """)
    assert "exception" not in out, out.get("exception")
    assert out["gray"] and out["status"] == "success" and out["result_gray"]
    assert out["offset_status"] == "success" and out["offset_geometry"] == [100, 80, 30, 20]
    assert out["names"][:2] == ["Impasto: Udnie", "small"]


def test_killing_the_plug_in_leaves_no_job_on_the_server(gimp, server: str, images: Path, caplog):
    """GIMP's status-bar Cancel SIGKILLs the plug-in; the server must drop the job."""
    caplog.set_level(logging.INFO, logger="impasto.jobs")
    started = len(job_lines(caplog.records))
    content = gimp.put(images / "content" / "astronaut.png")
    script = gimp.work / "long.py"
    script.write_text(
        "import gi\ngi.require_version('Gimp', '3.0')\nfrom gi.repository import Gimp, Gio\n"
        f"image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path({content!r}))\n"
        "p = Gimp.get_pdb().lookup_procedure('python-fu-impasto')\nc = p.create_config()\n"
        "c.set_property('run-mode', Gimp.RunMode.NONINTERACTIVE)\nc.set_property('image', image)\n"
        "c.set_core_object_array('drawables', image.get_layers())\nc.set_property('style', 'udnie')\n"
        f"c.set_property('server', {server!r})\nc.set_property('size', 64)\nc.set_property('iterations', 5000)\n"
        "p.run(c)\n"
    )
    gimp_process = gimp.start(f"exec(open({gimp.inside(script)!r}).read())")
    try:
        with Client(server) as client:
            deadline = time.monotonic() + 120
            while client.info().running_jobs == 0:
                assert time.monotonic() < deadline and gimp_process.poll() is None, "the job never started"
                time.sleep(0.1)
            plug_in = subprocess.run(
                ["pgrep", "-f", "plug-ins/impasto/impasto.py"], capture_output=True, text=True
            )
            pids = [int(pid) for pid in plug_in.stdout.split()]
            assert pids, "the plug-in process was not found"
            for pid in pids:
                subprocess.run(["kill", f"-{signal.SIGKILL.value}", str(pid)], check=True)
            deadline = time.monotonic() + 120  # a guard: the server notices at once, a loaded machine later
            while client.info().running_jobs or client.info().queue_length:
                assert time.monotonic() < deadline, "the job outlived the killed plug-in"
                time.sleep(0.02)
        # Stopped by the dropped connection, not run to its end.
        assert [outcome(line) for line in job_lines(caplog.records)[started:]] == ["cancelled"]
    finally:
        gimp_process.kill()
        gimp_process.wait()


GUI_SCRIPT = """
import hashlib, json, subprocess, time
import gi
gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gimp, Gio, Gegl
image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path({content!r}))
Gimp.Display.new(image)
procedure = Gimp.get_pdb().lookup_procedure("python-fu-impasto")
out = {{}}

def state():  # the layers' names and a digest of what the image shows
    copy = image.duplicate()
    flat = copy.flatten()
    rect = Gegl.Rectangle.new(0, 0, flat.get_width(), flat.get_height())
    data = bytes(flat.get_buffer().get(rect, 1.0, "R'G'B'A u8", Gegl.AbyssPolicy.NONE))
    copy.delete()
    return [[layer.get_name() for layer in image.get_layers()], hashlib.sha256(data).hexdigest()]

# Edit ▸ Undo as a user does it: Ctrl+Z (X test events) in the image's window, found by the size in its
# title. No PDB procedure undoes (GIMP 3.0 and 3.2 have only undo groups, freeze, thaw, enable, disable).
def press_undo():
    size = f"{{image.get_width()}}x{{image.get_height()}}"
    found = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", size], capture_output=True, text=True)
    windows = found.stdout.split()
    if windows:
        subprocess.run(["xdotool", "windowfocus", windows[0]], capture_output=True)
    pressed = subprocess.run(["xdotool", "key", "ctrl+z"], capture_output=True, text=True)
    return {{"windows": windows, "key": pressed.returncode, "said": found.stderr + pressed.stderr}}

def run(mode):
    config = procedure.create_config()
    config.set_property("run-mode", mode)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [image.get_layers()[-1]])
    config.set_property("server", {server!r})
    config.set_property("tls-ca", Gio.File.new_for_path({ca!r}))
    config.set_property("token", "s3cret")
    config.set_property("style", "starry-night")
    return int(procedure.run(config).index(0))

before = state()
out["interactive"] = run(Gimp.RunMode.INTERACTIVE) == int(Gimp.PDBStatusType.SUCCESS)
out["parasites"] = {{name: bytes(image.get_parasite(name).get_data()).decode(errors="replace")
                    for name in image.get_parasite_list() if "impasto" in name}}
# One Undo takes the whole result away: the image is as it was before the run.
after = state()
out["undo"] = {{"before": before, "after": after, "press": press_undo()}}
deadline = time.monotonic() + 60  # a guard: the undo shows at once
while len(image.get_layers()) != len(before[0]) and time.monotonic() < deadline:
    time.sleep(0.1)  # with two undo steps, the first undoes only part, and this waits in vain
out["undo"]["undone"] = state()
# Filters > Repeat: this image's last values (no token in them), the token remembered for the server.
out["repeat"] = run(Gimp.RunMode.WITH_LAST_VALS) == int(Gimp.PDBStatusType.SUCCESS)
out["layers"] = [layer.get_name() for layer in image.get_layers()]
with open({result!r}, "w") as f:
    json.dump(out, f)
"""

# Starts GIMP with the dialog's buttons pressed by IMPASTO_AUTOPILOT (autopilot.py); saves the screen as PNG at
# each stage: the dialog connected with the preview it made by itself, the dialog with another preset's
# preview and its Advanced section open, the progress window.
PILOT = ("connected,preview-shown,sleep:3,choose:the-scream,open:advanced,preview-shown,sleep:2,close:advanced,"
         "choose:starry-night,set:size=128,set:iterations=40,ok")  # fmt: skip
SCREENSHOT = """#!/bin/sh
IMPASTO_TEST_HOOK={hook} IMPASTO_AUTOPILOT={pilot} {gimp} --no-splash --batch-interpreter=python-fu-eval \\
  -b "exec(open('{script}').read())" > {log} 2>&1 &
shot() {{ xwd -root -silent | xwdtopnm 2>/dev/null | pnmtopng > "$1"; }}
wait_for() {{ for i in $(seq 1 $2); do if sh -c "$1"; then return 0; fi; sleep 0.5; done; return 1; }}
wait_for "grep -q 'impasto-autopilot: sleep:3' {log}" 360 && sleep 1.5 && shot {work}/dialog.png && echo dialog
wait_for "grep -q 'impasto-autopilot: sleep:2' {log}" 240 && sleep 1 && shot {work}/preview.png && echo preview
wait_for "xwininfo -root -tree | grep -q 'Impasto: Starry Night'" 60 && sleep 3.5 && shot {work}/progress.png \\
  && echo progress
wait_for "test -s {result}" 600 && echo finished
kill $! 2>/dev/null
"""


def test_dialog_preview_progress_undo_and_last_values_under_xvfb(gimp, tls_server, images: Path):
    """The interactive dialog against a TLS server with a token: it connects (presets, "Auto (N)",
    the server's state), the preview comes by itself, OK runs the job in the progress window; one
    Ctrl+Z in the image window takes the result away; then Filters ▸ Repeat runs again with the last
    values. Screenshots are kept in build/screenshots/."""
    assert (gimp.root / "usr/bin/xdotool").exists(), f"no xdotool in {gimp.root} (conftest installs it)"
    gimp.forget_last_values()
    address, cert = tls_server
    content = gimp.put(images / "content" / "chelsea.png")
    ca = gimp.put(cert)
    result = gimp.work / "gui.json"
    result.unlink(missing_ok=True)
    (gimp.work / "gui.py").write_text(
        GUI_SCRIPT.format(content=content, server=address, ca=ca, result=gimp.inside(result))
    )
    shell = gimp.work / "screenshot.sh"
    shell.write_text(
        SCREENSHOT.format(
            hook=gimp.hook(),
            pilot=PILOT,
            gimp=gimp.gui,
            script=gimp.inside(gimp.work / "gui.py"),
            work=gimp.inside(gimp.work),
            log=gimp.inside(gimp.work / "gui.log"),
            result=gimp.inside(result),
        )
    )
    shell.chmod(0o755)
    ran = subprocess.run(
        [*gimp.command(), "xvfb-run", "-a", "-s", "-screen 0 1280x900x24", gimp.inside(shell)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = (gimp.work / "gui.log").read_text(errors="replace") if (gimp.work / "gui.log").exists() else ""
    said = ran.stdout + ran.stderr[-2000:] + log[-3000:]
    assert "dialog" in ran.stdout and "preview" in ran.stdout and "finished" in ran.stdout, said
    out = json.loads(result.read_text())
    assert out["interactive"] and out["repeat"], (out, said)
    # One Ctrl+Z after the run: the new layer and everything else the plug-in did are gone.
    undo = out["undo"]
    assert undo["after"][0] == ["Impasto: Starry Night", *undo["before"][0]], undo
    assert undo["after"][1] != undo["before"][1], undo  # the result showed
    assert undo["undone"] == undo["before"], undo
    # Filters ▸ Repeat then paints again on the source.
    assert out["layers"] == ["Impasto: Starry Night", *undo["before"][0]], out

    # Last values: GIMP's own, globally (.last) and in the image (a persistent parasite, so in XCF
    # files) — with the server, style, TLS certificate and insecure choice, never the token.
    last = "".join(path.read_text() for path in (gimp.config / "plug-in-settings").glob("*impasto*.last"))
    assert address in last and ca in last and "insecure" in last and "starry-night" in last, last
    assert out["parasites"] and all(address in text for text in out["parasites"].values()), out
    assert "s3cret" not in last and not any("s3cret" in text for text in out["parasites"].values())
    remembered = gimp.config / "impasto.json"
    assert json.loads(remembered.read_text())["tokens"] == {address: "s3cret"}
    assert remembered.stat().st_mode & 0o077 == 0, "impasto.json must be readable by its owner only"

    # The job may end before its window is caught; the run itself was checked above.
    gimp.keep_screenshots("dialog", "preview", optional=("progress",))


def test_progress_window_cancel_stops_the_job_and_adds_nothing(gimp, server: str, images: Path, caplog):
    """Dialog (with two servers, one of them down) → OK on a job of many minutes → Paint in the question
    that asks first → the progress window shows the job's progress → its Cancel: the server logs the job
    as cancelled, GIMP's run returns CANCEL (no error message) and the image keeps its layers."""
    caplog.set_level(logging.INFO, logger="impasto.jobs")
    gimp.forget_last_values()
    content = gimp.put(images / "content" / "coffee.png")
    servers = f"127.0.0.1:9,{server}"
    started = len(job_lines(caplog.records))
    out, said = gimp.run_gui(
        "cancel",
        interactive_run(content, server=servers, style="udnie"),
        # Hours at this 2-core VM's pace (512 px × 5000 iterations: 134 min), and more than 5 minutes on a
        # machine 25 times faster: the server plans at the pace it measures on the machine it runs on.
        autopilot="connected,set:size=512,set:iterations=5000,ok,answer:paint,cancel-progress",
    )
    assert out is not None, said
    assert out["status"] == "cancel", (out, said)
    assert out["after"] == out["before"], out
    # The dialog connected to the server that answers, of the two; the progress window's Cancel was pressed.
    assert f"status: Connected to {server} (the least busy of 2 servers)" in said, said
    assert "impasto-autopilot: question: This will take about " in said, said
    assert "impasto-autopilot: cancel-progress" in said, said
    deadline = time.monotonic() + 60  # a guard: the line comes as the job ends
    while not job_lines(caplog.records)[started:] and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = job_lines(caplog.records)[started:]
    # The job OK started, cancelled; before it, the preview that the dialog ran by itself, if it had ended.
    assert outcome(lines[-1]) == "cancelled" and " style=udnie " in lines[-1] and len(lines) <= 2, lines
