"""`impasto stylize` end to end, in-process and as a real command."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import impasto.client
import impasto.engine.loading
import numpy as np
import pytest
from grpclib.const import Status
from helpers import interrupt_stylize, running_server
from impasto.cli import EXIT_CANCELLED, EXIT_FAILED, build_parser, main
from impasto.engine.learned_costs import FILE_NAME as LEARNED_COSTS
from impasto.jobs import Jobs
from impasto.protocol import PREVIEW_SIDE, Kind, from_status
from impasto.protocol.errors import CLIENT_KINDS, HINTS
from impasto.service.main import main as server_main
from PIL import Image

TINY = ("--size", "32", "--iterations", "2")


def run(*args: str) -> int:
    return main(["stylize", *args, "--quiet", "--size", "48", "--iterations", "4"])


def test_stylize_writes_the_content_size_and_changes_pixels(images: Path, tmp_path: Path):
    out = tmp_path / "out.png"
    content = images / "content" / "chelsea.png"
    assert run(str(content), "--style", str(images / "styles" / "starry-night.jpg"), "-o", str(out)) == 0
    result, source = np.asarray(Image.open(out)), np.asarray(Image.open(content).convert("RGB"))
    assert result.shape == source.shape
    assert np.abs(result.astype(int) - source).mean() > 5


def test_alpha_survives_the_cli(images: Path, tmp_path: Path):
    out = tmp_path / "out.png"
    content = images / "odd" / "rgba-640x480-transparent.png"
    assert run(str(content), "--style", str(images / "styles" / "udnie.jpg"), "-o", str(out)) == 0
    assert np.array_equal(
        np.array(Image.open(out).getchannel("A")), np.array(Image.open(content).getchannel("A"))
    )


def test_grayscale_16_bit_content(images: Path, tmp_path: Path):
    out = tmp_path / "out.png"
    content = images / "odd" / "gray16-300x200.png"
    assert run(str(content), "--style", str(images / "styles" / "the-scream.jpg"), "-o", str(out)) == 0
    assert Image.open(out).size == (300, 200)


def test_two_styles_with_weights(images: Path, tmp_path: Path):
    out = tmp_path / "out.png"
    styles = images / "styles"
    code = run(
        str(images / "content" / "coffee.png"),
        "--style",
        str(styles / "udnie.jpg"),
        "--style-weight",
        "0.7",
        "--style",
        str(styles / "water-lilies.jpg"),
        "--style-weight",
        "0.3",
        "-o",
        str(out),
    )
    assert code == 0 and out.is_file()


def test_unreadable_style_is_named_and_fails(tmp_path: Path, images: Path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "out.png"
    assert run(str(images / "content" / "camera.png"), "--style", str(broken), "-o", str(out)) == EXIT_FAILED
    assert "broken.jpg" in capsys.readouterr().err
    assert not out.exists()


def test_mismatched_style_weights_are_explained(images: Path, tmp_path: Path, capsys):
    code = run(
        str(images / "content" / "camera.png"),
        "--style",
        str(images / "styles" / "udnie.jpg"),
        "--style-weight",
        "1",
        "--style-weight",
        "2",
        "-o",
        str(tmp_path / "o.png"),
    )
    assert code == EXIT_FAILED and "one weight per style" in capsys.readouterr().err


def test_ctrl_c_stops_cleanly_and_writes_nothing(images: Path, tmp_path: Path):
    out = tmp_path / "out.png"
    content, style = images / "content" / "camera.png", images / "styles" / "udnie.jpg"
    code, stderr = interrupt_stylize(
        str(content), "--style", str(style), "-o", str(out), "--size", "64", "--iterations", "100000"
    )
    assert code == EXIT_CANCELLED and "cancelled" in stderr and not out.exists()


# ---- batches --------------------------------------------------------------------------------------


def batch(*args: str) -> int:
    return main(["stylize", *args, *TINY])


@pytest.fixture
def photos(images: Path, tmp_path: Path) -> Path:
    """A folder with two photos, one of them with alpha, and a text file that is not an image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(images / "content" / "camera.png", folder / "camera.png")
    Image.open(images / "odd" / "rgba-640x480-transparent.png").resize((64, 48)).save(folder / "clear.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_a_folder_makes_a_batch_with_one_model_one_jobs_and_a_line_per_file(
    photos: Path, images: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
):
    loads, submits = [], []
    load_engine, submit = impasto.engine.loading.load_engine, Jobs.submit
    monkeypatch.setattr(impasto.engine.loading, "load_engine", lambda *a: loads.append(a) or load_engine(*a))
    monkeypatch.setattr(Jobs, "submit", lambda self, *a: submits.append(self) or submit(self, *a))
    out = tmp_path / "new" / "out/"  # missing, ending in /: created
    style = str(images / "styles" / "udnie.jpg")
    assert batch(str(photos), "--style", style, "-o", f"{out}/") == 0
    assert sorted(p.name for p in out.iterdir()) == ["camera.png", "clear.png"]
    assert np.array_equal(
        np.array(Image.open(out / "clear.png").getchannel("A")),
        np.array(Image.open(photos / "clear.png").getchannel("A")),
    )
    assert len(loads) == 1 and len(submits) == 2 and submits[0] is submits[1]
    err = capsys.readouterr().err
    assert "[1/2] camera.png" in err and "[2/2] clear.png" in err and "2 of 2 written" in err


def test_several_files_and_a_quoted_pattern(photos: Path, images: Path, tmp_path: Path):
    style = str(images / "styles" / "udnie.jpg")
    assert (
        batch(str(photos / "camera.png"), str(photos / "clear.png"), "--style", style, "-o", str(tmp_path))
        == 0
    )
    assert (tmp_path / "camera.png").is_file() and (tmp_path / "clear.png").is_file()
    out = tmp_path / "from-pattern"
    assert batch(str(photos / "c*.png"), "--style", style, "-o", f"{out}/") == 0
    assert sorted(p.name for p in out.iterdir()) == ["camera.png", "clear.png"]
    assert batch(str(photos / "camera.png"), "--style", style, "-o", f"{tmp_path}/one/") == 0
    assert (tmp_path / "one" / "camera.png").is_file()


def test_an_unreadable_file_is_named_and_the_batch_goes_on(
    photos: Path, images: Path, tmp_path: Path, capsys
):
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    style = str(images / "styles" / "udnie.jpg")
    assert batch(str(photos), "--style", style, "-o", f"{tmp_path}/out/", "--quiet") == EXIT_FAILED
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["camera.png", "clear.png"]
    err = capsys.readouterr().err
    assert "broken.jpg is not a readable image" in err and "failed: " in err


@pytest.mark.parametrize(
    "contents, output, words",
    [
        (["a.png", "b.png"], "out.png", "folder"),
        (["{photos}"], "out.png", "folder"),
        (["{photos}"], "{photos}/", "over its own content"),
        (["{photos}/*.jpg"], "out/", "no image files match"),
    ],
)
def test_batch_mistakes_are_usage_errors(photos: Path, tmp_path: Path, capsys, contents, output, words):
    contents = [c.format(photos=photos) for c in contents]
    with pytest.raises(SystemExit) as caught:
        batch(*contents, "--style", "udnie", "-o", str(tmp_path / output.format(photos=photos)))
    assert caught.value.code == 2 and words in capsys.readouterr().err


def test_a_batch_over_the_network_is_a_job_per_file_through_one_client(
    photos: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    clients, jobs = [], []

    class Counted(impasto.client.Client):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            clients.append(self)

        def stylize(self, *args):
            jobs.append(self)
            return super().stylize(*args)

    monkeypatch.setattr(impasto.client, "Client", Counted)
    with running_server("--styles-dir", str(images / "styles")) as address:
        assert (
            batch(str(photos), "--style", "udnie", "-o", f"{tmp_path}/", "--server", address, "--quiet") == 0
        )
    assert len(clients) == 1 and jobs == clients * 2
    assert (tmp_path / "camera.png").is_file() and (tmp_path / "clear.png").is_file()


def test_ctrl_c_stops_a_batch_and_writes_nothing_more(images: Path, tmp_path: Path):
    out = tmp_path / "out"
    code, stderr = interrupt_stylize(
        str(images / "content"), "--style", "udnie", "-o", f"{out}/", "--size", "64", "--iterations", "100000"
    )
    assert code == EXIT_CANCELLED and "cancelled" in stderr and list(out.iterdir()) == []


# ---- what the user reads when a call fails ---------------------------------------------------------


GRPC_DETAILS = {  # what gRPC itself writes, never to be shown
    Status.CANCELLED: "Locally cancelled by application!",
    Status.UNAVAILABLE: "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:9",
    Status.UNKNOWN: "Exception iterating requests!",
    Status.DEADLINE_EXCEEDED: "Deadline Exceeded",
    Status.RESOURCE_EXHAUSTED: "Received message larger than max (5000000 vs. 1114112)",
    Status.UNIMPLEMENTED: "Method not found!",
}


@pytest.mark.parametrize("status", [s.name for s in Status if s != Status.OK])
def test_a_status_without_the_servers_kind_is_a_sentence_without_grpcs_words(status: str):
    """gRPC, the network or a proxy ended the call (no kind in the trailers): its words never show."""
    details = GRPC_DETAILS.get(Status[status], "Cancelling all calls")
    error = from_status(status, details, None, "gpu:50051")
    text = error.sentence("cli")
    assert text and "[" not in text and status not in text and details not in text


@pytest.mark.parametrize("kind", [k for k in Kind if k not in CLIENT_KINDS], ids=lambda k: k.name)
def test_the_servers_kind_and_words_make_the_sentence(kind: Kind):
    said = "the job queue is full (8 waiting); try again when a job has finished"
    error = from_status(kind.status, said, kind.name.lower(), "gpu:50051")
    assert error.kind is kind and said in str(error)
    # A kind that does not go with the status was not the server's (a proxy rewrote the status).
    other = next(k for k in Kind if k.status != kind.status)
    assert said not in str(from_status(other.status, said, kind.name.lower(), "h:1"))


def test_sentences_say_what_to_do_in_the_readers_words():
    error = from_status("NOT_FOUND", "no style preset 'x' on this server", "not_found", "gpu:50051")
    assert str(error) == "the server at gpu:50051 refused the job: no style preset 'x' on this server"
    assert "impasto styles" in error.sentence("cli") and "--" not in error.sentence("gimp")
    unreachable = from_status("UNAVAILABLE", GRPC_DETAILS[Status.UNAVAILABLE], None, "h:1")
    assert unreachable.sentence("cli").startswith("cannot reach an Impasto server at h:1")
    assert "impasto-server" in unreachable.sentence("cli") and "Server field" in unreachable.sentence("gimp")
    # GIMP's words name the dialog's fields, never a flag of ours (a command quoted whole, run on the
    # server's machine, aside), wherever a front end's hint follows.
    assert all("--" not in re.sub(r"`[^`]*`", "", hint) for hint in HINTS["gimp"].values()), HINTS["gimp"]
    memory = from_status("RESOURCE_EXHAUSTED", "allow it at least 687 MiB", "out_of_memory", "h:1")
    assert "--" not in memory.sentence("gimp") and "--memory-budget" in memory.sentence("cli")
    failed = from_status("INTERNAL", "job 1a2b failed (TypeError)", "bug", "h:1")
    assert str(failed) == "the server at h:1 failed: job 1a2b failed (TypeError); its log has details"


def test_unknown_preset_over_the_network_is_a_sentence(images: Path, tmp_path: Path, capsys):
    with running_server("--styles-dir", str(images / "styles")) as address:
        code = batch(
            str(images / "content" / "camera.png"),
            "--style",
            "nope",
            "-o",
            str(tmp_path / "o.png"),
            "--server",
            address,
            "--quiet",
        )
    err = capsys.readouterr().err
    assert code == EXIT_FAILED and f"the server at {address} refused the job: no style preset 'nope'" in err
    assert "[NOT_FOUND" not in err and "NOT_FOUND" not in err


# ---- options and neighbours ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value", [("--size", "0"), ("--iterations", "0"), ("--size", "-3"), ("--iterations", "-1")]
)
def test_zero_or_negative_numbers_are_usage_errors_before_any_progress(
    images: Path, tmp_path: Path, capsys, option, value
):
    args = [
        "stylize",
        str(images / "content" / "camera.png"),
        "--style",
        "udnie",
        "-o",
        str(tmp_path / "o.png"),
    ]
    with pytest.raises(SystemExit) as caught:
        main([*args, option, value])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and option in err and "it/s" not in err and "0it" not in err
    assert not (tmp_path / "o.png").exists()


def test_size_auto_is_the_default(images: Path, tmp_path: Path):
    args = ["stylize", "c.png", "--style", "udnie", "-o", "o.png", "--size", "auto", "--iterations", "auto"]
    parsed = build_parser().parse_args(args)
    assert parsed.size is None and parsed.iterations is None
    Image.new("RGB", (24, 16), (200, 90, 40)).save(tmp_path / "small.png")
    out = tmp_path / "out.png"
    style = str(images / "styles" / "udnie.jpg")
    code = main(
        [
            "stylize",
            str(tmp_path / "small.png"),
            "--style",
            style,
            "-o",
            str(out),
            "--size",
            "auto",
            "--iterations",
            "2",
            "--quiet",
        ]
    )
    assert code == 0 and Image.open(out).size == (24, 16)


def test_info_into_head_ends_quietly():
    impasto = f"'{sys.executable}' -m impasto.cli info --local"
    result = subprocess.run(
        ["bash", "-c", f'{impasto} | head -1; echo "status=${{PIPESTATUS[0]}}" >&2'],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.startswith("impasto ") and len(result.stdout.splitlines()) == 1
    assert "Broken pipe" not in result.stderr and "Traceback" not in result.stderr
    assert "status=0" in result.stderr or f"status={128 + signal.SIGPIPE}" in result.stderr


def test_server_help_mentions_the_styles_command(capsys):
    with pytest.raises(SystemExit) as caught:
        server_main(["--help"])
    assert caught.value.code == 0 and "styles" in capsys.readouterr().out


@pytest.mark.parametrize("before", [True, False], ids=["styles-dir-first", "styles-dir-last"])
def test_server_styles_import_takes_styles_dir_anywhere(tmp_path: Path, capsys, before: bool):
    source, library = tmp_path / "mine", tmp_path / "library"
    source.mkdir()
    Image.new("RGB", (40, 30), (10, 120, 200)).save(source / "blue-study.png")
    where = ["--styles-dir", str(library)]
    argv = [*where, "styles", "import", str(source)] if before else ["styles", "import", str(source), *where]
    assert server_main(argv) == 0
    assert (library / "blue-study.png").is_file()
    assert server_main(["styles", "list", *where]) == 0
    assert "blue-study" in capsys.readouterr().out


def test_server_styles_list_of_an_empty_folder_gives_a_hint(tmp_path: Path, capsys):
    assert server_main(["styles", "list", "--styles-dir", str(tmp_path / "empty")]) == 0
    assert "styles import" in capsys.readouterr().err


def test_a_batch_spreads_over_servers_and_survives_one_stopping(images: Path, tmp_path: Path, capsys):
    """`--server A,B`: each server paints files as it frees up; when B stops mid-batch, its file goes to A,
    and every file is written once."""
    import threading
    import time

    from helpers import start_server
    from impasto.client import Client

    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(6):
        shutil.copyfile(images / "content" / "camera.png", folder / f"photo-{index}.png")
    out = tmp_path / "out"
    styles = ("--styles-dir", str(images / "styles"), "--grace-seconds", "0")
    with running_server(*styles) as first:
        second, stop_second = start_server(*styles)
        stopped = threading.Event()

        def stop_second_once_busy() -> None:
            deadline = time.monotonic() + 120
            with Client(second) as client:
                while time.monotonic() < deadline and not client.info().running_jobs:
                    time.sleep(0.02)  # polling for the condition, with a deadline
            stop_second()
            stopped.set()

        watcher = threading.Thread(target=stop_second_once_busy, daemon=True)
        watcher.start()
        servers = f"{first},{second}"
        code = main(["stylize", str(folder), "--style", "udnie", "-o", f"{out}/", "--server", servers,
                     "--size", "32", "--iterations", "60", "--quiet"])  # fmt: skip
        watcher.join(timeout=60)
    err = capsys.readouterr().err
    assert stopped.is_set() and code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [f"photo-{i}.png" for i in range(6)]
    assert err.count(" wrote ") == 6, err  # once each
    assert f"via {second}" in err or "the other servers take its files" in err
    assert "the other servers take its files" in err


def test_size_full_paints_at_the_contents_own_size(images: Path, tmp_path: Path):
    out = tmp_path / "full.png"
    content = images / "content" / "chelsea.png"
    code = main(["stylize", str(content), "--style", "udnie", "-o", str(out), "--size", "full",
                 "--iterations", "2", "--quiet"])  # fmt: skip
    assert code == 0 and Image.open(out).size == Image.open(content).size


def test_the_bar_shows_a_time_left_before_the_first_iteration(images: Path, tmp_path: Path, capsys):
    """The plan's estimate is on screen while the targets are computed, not a bar that looks stuck."""
    out = tmp_path / "out.png"
    content, style = images / "content" / "chelsea.png", images / "styles" / "starry-night.jpg"
    assert main(["stylize", str(content), "--style", str(style), "-o", str(out), *TINY]) == 0
    shown = capsys.readouterr().err
    preparing, first_scale = shown.find("preparing 32×21"), shown.find("scale 1/")
    assert 0 <= preparing < first_scale, shown
    assert "left" in shown[preparing:first_scale], shown


def test_local_info_prints_the_defaults_a_job_gets(capsys):
    from impasto.engine import default_iterations, default_size
    from impasto.engine.device import pick_device

    device = pick_device("auto")  # what `info --local` runs on: a CPU here, a GPU on a GPU machine
    assert main(["info", "--local"]) == 0
    expected = f"defaults:  {default_size(device)} px long side, {default_iterations(device)} iterations"
    assert expected in capsys.readouterr().out


def test_byte_sizes_take_units_in_both_commands(capsys: pytest.CaptureFixture[str]):
    from impasto.service.main import build_parser as server_parser

    server = server_parser().parse_args(["--memory-budget", "300MiB", "--max-request-bytes", "1GiB"])
    assert (server.memory_budget, server.max_request_bytes) == (300 << 20, 1 << 30)
    client = build_parser().parse_args(
        ["stylize", "a.png", "--style", "x", "-o", "o.png", "--memory-budget", "400MiB"]
    )
    assert client.memory_budget == 400 << 20
    said = []
    for parse, args in (
        (server_parser().parse_args, ["--memory-budget", "300 MiBs"]),
        (
            build_parser().parse_args,
            ["stylize", "a.png", "--style", "x", "-o", "o.png", "--memory-budget", "300 MiBs"],
        ),
    ):
        with pytest.raises(SystemExit):
            parse(args)
        said.append(capsys.readouterr().err.strip().splitlines()[-1].split("error: ", 1)[1])
    assert said[0] == said[1], said
    assert "'300 MiBs' is not a size in bytes" in said[0] and "400MiB" in said[0], said


def test_preview_writes_the_small_picture_the_dialog_shows(images: Path, tmp_path: Path):
    out = tmp_path / "preview.png"
    content = images / "content" / "chelsea.png"
    code = main(["stylize", str(content), "--style", "udnie", "-o", str(out), "--preview", "--quiet",
                 "--iterations", "2"])  # fmt: skip
    width, height = Image.open(out).size
    assert code == 0 and max(width, height) <= PREVIEW_SIDE
    assert abs(width / height - 451 / 300) < 0.02  # the content's shape


@pytest.mark.parametrize("where", ["in-process", "server"])
def test_dry_run_prints_the_plan_and_paints_nothing(
    images: Path, tmp_path: Path, capsys, where: str, cache_dir: Path
):
    out = tmp_path / "never.png"
    content = images / "content" / "chelsea.png"  # 256×170
    args = ["stylize", str(content), "--style", "udnie", "-o", str(out), "--dry-run"]
    if where == "server":
        with running_server("--styles-dir", str(images / "styles")) as address:
            code = main([*args, "--server", address])
    else:
        code = main(args)
        # The plan of a first run here is at this machine's pace, measured before it (as a server does).
        assert (cache_dir / LEARNED_COSTS).is_file()
    said = capsys.readouterr().out
    assert code == 0 and not out.exists()
    assert "chelsea.png: working size 384×255" in said, said
    assert re.search(r"scale (\d+)/\1: 384×255, 40 iterations", said), said  # the last scale
    assert main([*args, "--size", "full"]) == 0
    assert re.search(r"scale (\d+)/\1: 256×170", capsys.readouterr().out)
    # A budget with no room for tiles worth running is refused at once, naming one that would do.
    assert main([*args, "--size", "full", "--memory-budget", "64MiB"]) == EXIT_FAILED
    refusal = capsys.readouterr().err
    assert "the memory budget is 64 MiB" in refusal and "allow it at least" in refusal, refusal
    assert "--memory-budget sets the budget" in refusal, refusal  # the flag, in the CLI's words only
