"""The optimisation as a user sees it: the loss falls, runs repeat, cancel is prompt, colours hold."""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import gradient_image
from impasto.engine import DEFAULT, Cancelled, Engine, Options, Progress, Style
from impasto.engine import estimate as estimate_module
from impasto.engine import run as run_module
from impasto.engine.estimate import FIRST_GUESS_COSTS, LEARNING_SECONDS, CostModel
from impasto.engine.imageops import rgb_to_yuv
from impasto.engine.learned_costs import LearnedCosts
from impasto.engine.plan import SETUP_ITERATIONS, scale_sizes, schedule

CONTENT = gradient_image(48, 64, seed=0)
# A style with strong, different colours and texture: red/green stripes.
STYLE = torch.zeros(1, 3, 64, 64)
STYLE[:, 0, :, ::4] = 1.0
STYLE[:, 1, :, 2::4] = 0.8
FAST = Options(size=64, iterations=8)


def test_loss_falls_by_a_large_factor(engine: Engine):
    seen = []
    engine.stylize(CONTENT, [Style(STYLE)], replace(FAST, iterations=60), on_progress=seen.append)
    total = [p.content_loss + p.style_loss + p.tv_loss for p in seen]
    assert total[-1] < total[0] / 4, total
    assert seen[-1].style_loss < seen[0].style_loss / 10


def test_result_is_the_working_size_and_differs_from_content(engine: Engine):
    result = engine.stylize(CONTENT, [Style(STYLE)], FAST)
    assert result.shape == (1, 3, 48, 64)
    assert result.min() >= 0 and result.max() <= 1
    assert (result - CONTENT).abs().mean() > 0.02


def test_same_seed_repeats_bit_for_bit(engine: Engine):
    options = replace(FAST, init="noise", seed=7)
    first = engine.stylize(CONTENT, [Style(STYLE)], options)
    second = engine.stylize(CONTENT, [Style(STYLE)], options)
    other_seed = engine.stylize(CONTENT, [Style(STYLE)], replace(options, seed=8))
    assert torch.equal(first, second)
    assert not torch.equal(first, other_seed)


def test_cancel_stops_within_one_iteration(engine: Engine):
    cancel = threading.Event()
    seen = []

    def on_progress(progress):
        seen.append(progress.step)
        if progress.step == 3:
            cancel.set()

    with pytest.raises(Cancelled):
        engine.stylize(
            CONTENT, [Style(STYLE)], replace(FAST, iterations=50), on_progress=on_progress, cancel=cancel
        )
    assert seen == [1, 2, 3]


def test_cancel_stops_between_style_passes(engine: Engine, monkeypatch: pytest.MonkeyPatch):
    """Each style's forward pass may take seconds: a cancel during one stops the job before the next."""
    cancel = threading.Event()
    features, passes = engine.features, []

    def counting(net, image):
        passes.append(tuple(image.shape[2:]))
        if len(passes) == 2:  # the content's pass, then the first style's
            cancel.set()
        return features(net, image)

    monkeypatch.setattr(engine, "features", counting)
    styles = [Style(gradient_image(64, 64, seed=seed)) for seed in range(4)]
    with pytest.raises(Cancelled):
        engine.stylize(CONTENT, styles, FAST, cancel=cancel)
    assert len(passes) == 2, passes


def test_progress_is_monotonic_with_a_finite_estimate(engine: Engine):
    seen = []
    # 91 → 117 → 150: the coarsest scale runs them all (it is the preview), the middle one half.
    options = replace(FAST, size=150, iterations=4)
    engine.stylize(CONTENT, [Style(STYLE)], options, on_progress=seen.append)
    assert [p.step for p in seen] == list(range(1, len(seen) + 1))
    assert seen[-1].fraction == 1.0 and seen[-1].scales == 3 and seen[-1].steps == 10
    assert [(p.scale, p.iterations) for p in seen] == [(1, 4)] * 4 + [(2, 2)] * 2 + [(3, 4)] * 4
    assert all(math.isfinite(p.eta) and p.eta >= 0 for p in seen)
    assert seen[-1].eta == 0


def by_rate(p: Progress) -> float:
    """The time left at the job's own rate so far."""
    return p.elapsed * (1 - p.fraction) / p.fraction


def test_time_left_starts_from_the_plan_and_ends_at_zero(engine: Engine):
    """Before a tenth of the work the time left leans on the plan's estimate, not on a rate that the
    targets' set-up inflates; from then on it is the job's own rate. Both are read against the job's own
    clock (`elapsed`), so a loaded machine moves them together."""
    options = replace(FAST, size=184, iterations=40)
    plan = engine.plan(tuple(CONTENT.shape[2:]), [tuple(STYLE.shape[2:])], options)
    plan = replace(plan, estimate=replace(plan.estimate, seconds=1000.0))
    seen = []
    engine.stylize(CONTENT, [Style(STYLE)], options, on_progress=seen.append, plan=plan)
    first = seen[0]
    planned = 1000.0 - first.elapsed
    assert first.fraction < 0.05, first  # the rate's share is under a half
    assert min(planned, by_rate(first)) <= first.eta <= max(planned, by_rate(first)), first
    assert abs(first.eta - planned) <= abs(first.eta - by_rate(first)), first  # nearer the plan
    late = [p for p in seen[:-1] if p.fraction >= 0.1]
    assert late and all(p.eta == pytest.approx(by_rate(p)) for p in late)  # the plan's 1000 s left behind
    assert seen[-1].eta == 0


class FakeClock:
    """The run's clock, moved on only by the iterations' passes of the network, by what a machine with
    `costs` would take; a scale's set-up (its targets, the first pass on new shapes) takes one more."""

    def __init__(self, engine: Engine, monkeypatch: pytest.MonkeyPatch, costs: CostModel):
        self.now, self.costs, features = 0.0, costs, engine.features
        monkeypatch.setattr(run_module, "time", self)
        shape: list[tuple[int, ...]] = [()]

        def timed(net, image: torch.Tensor):
            if image.requires_grad:  # an iteration's pass, not a target's
                runs = 1 if image.shape == shape[0] else 1 + SETUP_ITERATIONS
                shape[0] = image.shape
                self.now += runs * self.costs.seconds(1, image.shape[2] * image.shape[3])
            return features(net, image)

        monkeypatch.setattr(engine, "features", timed)

    def monotonic(self) -> float:
        return self.now


def test_a_plan_costs_each_iteration_its_fixed_part_and_its_pixels(engine: Engine, monkeypatch):
    """Many small iterations and a few large ones of as many pixel-iterations: the fixed part makes the
    small ones cost 12 times more. Each scale's set-up costs one iteration more."""
    costs = CostModel(seconds_per_pass=0.05, seconds_per_pixel_iteration=1e-6)
    monkeypatch.setattr(engine, "cost_model", costs)
    one_scale = replace(DEFAULT, coarse_to_fine=False)
    small = Options(size=64, iterations=400, recipe=one_scale, memory_budget=4 << 30)
    large = replace(small, size=640, iterations=4)
    pixel_iterations = 48 * 64 * 400
    assert pixel_iterations == 480 * 640 * 4
    many = engine.plan((480, 640), [(64, 64)], small).estimate.seconds
    few = engine.plan((480, 640), [(64, 64)], large).estimate.seconds
    assert many == pytest.approx(401 * (0.05 + 48 * 64 * 1e-6))  # 21.3 s
    assert few == pytest.approx(5 * (0.05 + 480 * 640 * 1e-6))  # 1.8 s


def test_the_cost_model_learns_both_parts_from_what_scales_took():
    machine = CostModel(seconds_per_pass=0.03, seconds_per_pixel_iteration=4e-6)
    # (passes, pixel-iterations): the default CPU job's four scales, and a scale in 6 tiles.
    work = [(20, 20 * 91 * 136), (20, 20 * 128 * 192), (20, 20 * 181 * 272), (40, 40 * 256 * 384)]
    work.append((4 * 2 * 6, 4 * 512 * 768 * 3.1))
    samples = [(passes, pixels, machine.seconds(passes, pixels)) for passes, pixels in work]
    learned = CostModel(0.0, 1e-5).learned(samples)
    assert learned.seconds_per_pass == pytest.approx(0.03)
    assert learned.seconds_per_pixel_iteration == pytest.approx(4e-6)
    # One size cannot part them, nor can timings that would make a part negative (a coarse scale
    # slowed by other work): the guess's proportion stays, at the speed the scales show.
    guess = CostModel(0.01, 1e-6)
    slowed = [(20, 20 * 91 * 136, 3.0), (20, 20 * 128 * 192, 2.0)]
    for timings in (samples[3:4], slowed):
        refitted = guess.learned(timings)
        assert refitted.seconds_per_pass / refitted.seconds_per_pixel_iteration == pytest.approx(0.01 / 1e-6)
        planned = sum(refitted.seconds(passes, pixels) for passes, pixels, _ in timings)
        assert planned == pytest.approx(sum(seconds for *_, seconds in timings))
    assert guess.learned([]) == guess


@pytest.mark.parametrize("device", [("cuda", "bf16"), ("cuda", "fp32"), ("mps", "fp32")])
def test_a_gpus_first_rate_learned_from_one_small_scale_keeps_large_plans_in_proportion(device):
    """A small job of one scale on a GPU (~78² px, 40 iterations, a preview's size) takes its time in
    launches, not pixels: what the engine learns from it must not plan a large job at many times the
    guess (before the guess had a fixed part, 4 ms an iteration planned a 1024 px job at ~100×)."""
    guess = FIRST_GUESS_COSTS[device]
    preview = (41, 41 * 78 * 78)  # its set-up and iterations: passes, pixel-iterations
    ok = (300, 2e8)  # a 1024 px job's scales, roughly
    for milliseconds_an_iteration in (1, 4, 10):
        learned = guess.learned([(*preview, preview[0] * milliseconds_an_iteration / 1000)])
        assert learned.seconds(*ok) < 10 * guess.seconds(*ok), milliseconds_an_iteration


def test_time_left_counts_the_fixed_cost_of_the_coarse_iterations(engine: Engine, monkeypatch):
    """On a machine unlike the first guess (fixed costs that dominate a coarse iteration, pixels cheap)
    the engine learns both costs from one job, and the next job's time left is then the truth from a
    tenth of its work on."""
    monkeypatch.setattr(engine, "cost_model", CostModel(0.0, 2e-6))
    monkeypatch.setattr(estimate_module, "LEARNING_SECONDS", 0.0)  # one job teaches all it fits
    machine = CostModel(seconds_per_pass=0.03, seconds_per_pixel_iteration=0.5e-6)
    clock = FakeClock(engine, monkeypatch, machine)
    options = replace(FAST, size=184, iterations=8)  # 8 at 68×91, 4 and 4, then 8 at 138×184
    engine.stylize(CONTENT, [Style(STYLE)], options)
    assert engine.cost_model.seconds_per_pass == pytest.approx(0.03)
    assert engine.cost_model.seconds_per_pixel_iteration == pytest.approx(0.5e-6)

    seen = []
    started = clock.now
    engine.stylize(CONTENT, [Style(STYLE)], options, on_progress=seen.append)
    took = clock.now - started
    assert engine.plan(tuple(CONTENT.shape[2:]), [tuple(STYLE.shape[2:])], options).estimate.seconds == (
        pytest.approx(took)
    )
    # The share of work done is the share of time (by pixels alone a coarse iteration would count for
    # less than its time: 0.03 s of its 0.036 s are fixed).
    assert all(p.fraction == pytest.approx(p.elapsed / took) for p in seen)
    late = [p for p in seen if p.fraction >= 0.1]
    assert late and all(p.eta == pytest.approx(took - p.elapsed, abs=1e-9) for p in late)


def test_previews_arrive_at_the_chosen_interval(engine: Engine):
    previews = []
    engine.stylize(
        CONTENT,
        [Style(STYLE)],
        replace(FAST, preview_seconds=0.0),
        on_preview=lambda image, p: previews.append((image.shape, p.step)),
    )
    assert len(previews) == FAST.iterations
    assert previews[0][0] == (1, 3, 48, 64)


def test_preserve_colors_keeps_the_contents_chrominance(engine: Engine):
    plain = engine.stylize(CONTENT, [Style(STYLE)], FAST)
    kept = engine.stylize(CONTENT, [Style(STYLE)], replace(FAST, preserve_colors=True))
    content_uv = rgb_to_yuv(CONTENT)[:, 1:].mean(dim=(2, 3))
    kept_uv = rgb_to_yuv(kept)[:, 1:].mean(dim=(2, 3))
    plain_uv = rgb_to_yuv(plain)[:, 1:].mean(dim=(2, 3))
    assert (kept_uv - content_uv).abs().max() < 0.01
    assert (plain_uv - content_uv).abs().max() > 3 * (kept_uv - content_uv).abs().max()


def test_a_zero_weight_style_changes_nothing(engine: Engine):
    other = gradient_image(40, 40, seed=5)
    alone = engine.stylize(CONTENT, [Style(STYLE)], FAST)
    blended = engine.stylize(CONTENT, [Style(STYLE, 1.0), Style(other, 0.0)], FAST)
    assert torch.equal(alone, blended)


def test_strength_moves_the_result_towards_the_style(engine: Engine):
    weak = engine.stylize(CONTENT, [Style(STYLE)], replace(FAST, strength=0.1))
    strong = engine.stylize(CONTENT, [Style(STYLE)], replace(FAST, strength=10))
    assert (strong - CONTENT).abs().mean() > (weak - CONTENT).abs().mean()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strength": -1}, "strength"),
        ({"iterations": math.nan}, "iterations"),
        ({"size": 4}, "working size"),
        ({"style_scale": 100}, "style scale"),
    ],
)
def test_absurd_options_are_refused(engine: Engine, change, message):
    with pytest.raises(ValueError, match=message):
        engine.stylize(CONTENT, [Style(STYLE)], replace(FAST, **change))


@pytest.mark.parametrize("shape", [(300, 400), (400, 400), (150, 600)])
def test_schedule_climbs_evenly_from_the_smallest_scale_to_the_working_size(shape):
    sizes = scale_sizes(*shape, 512, DEFAULT)
    assert max(sizes[-1]) == 512
    # The first scale, the preview, has the recipe's pixels whatever the shape: it costs the same.
    assert sizes[0][0] * sizes[0][1] == pytest.approx(DEFAULT.min_pixels, rel=0.03)
    ratios = [max(b) / max(a) for a, b in itertools.pairwise(sizes)]
    assert all(r <= math.sqrt(2) + 0.02 and abs(r - ratios[0]) < 0.02 for r in ratios)
    assert len(scale_sizes(*shape, 64, DEFAULT)) == 1  # smaller than the first scale: painted in one
    assert scale_sizes(300, 400, 512, replace(DEFAULT, coarse_to_fine=False)) == [(384, 512)]


def test_coarser_scales_run_the_recipes_share_of_the_iterations():
    scales = schedule(300, 400, Options(size=512, iterations=100))
    assert [s.size for s in scales] == scale_sizes(300, 400, 512, DEFAULT)
    # The coarsest lays out colour and composition (and is the preview): it runs them all.
    assert [s.iterations for s in scales] == [100] + [50] * (len(scales) - 2) + [100]
    assert [s.iterations for s in schedule(300, 400, Options(size=512, iterations=1))][-2:] == [1, 1]
    every_scale_alike = Options(size=512, iterations=7, recipe=replace(DEFAULT, coarse_iterations=1.0))
    assert {s.iterations for s in schedule(300, 400, every_scale_alike)} == {7}


def test_adam_recipe_also_converges(engine: Engine):
    from impasto.engine.recipes import with_optimizer

    totals = []
    engine.stylize(
        CONTENT,
        [Style(STYLE)],
        replace(FAST, iterations=30, recipe=with_optimizer(DEFAULT, "adam")),
        on_progress=lambda p: totals.append(p.style_loss),
    )
    assert totals[-1] < totals[0] / 2


def estimate(engine: Engine, options: Options, style_size: tuple[int, int] = (300, 400)):
    return engine.plan((300, 400), [style_size], options).estimate


def test_estimates_grow_with_the_work_and_learn_from_the_last_job(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(engine, "cost_model", engine.cost_model)  # what this job learns stays here
    small, large = estimate(engine, Options(size=256)), estimate(engine, Options(size=512))
    assert 3 < large.peak_bytes / small.peak_bytes < 5 and large.seconds > small.seconds
    twice = estimate(engine, Options(size=256, iterations=200)).seconds  # the set-ups are paid once
    assert 1.9 * small.seconds < twice < 2 * small.seconds
    before = engine.cost_model
    planned = engine.plan((48, 64), [(48, 64)], FAST).estimate.seconds
    # A job of a fraction of a second (its time mostly start-up and noise) barely moves the plans.
    clock = FakeClock(engine, monkeypatch, CostModel(0.01, 5e-6))
    engine.stylize(CONTENT, [Style(STYLE)], FAST)
    took = clock.now
    replanned = engine.plan((48, 64), [(48, 64)], FAST).estimate.seconds
    assert took < 0.1 * LEARNING_SECONDS and 0 < (replanned - planned) / (took - planned) < 0.1
    # A job of many minutes (the same one on a machine a thousand times slower) nearly replaces them.
    clock.costs = CostModel(10.0, 5e-3)
    started = clock.now
    engine.stylize(CONTENT, [Style(STYLE)], FAST)
    took = clock.now - started
    learned = engine.cost_model
    assert took > 20 * LEARNING_SECONDS
    assert engine.plan((48, 64), [(48, 64)], FAST).estimate.seconds == pytest.approx(took, rel=0.05)
    # One scale cannot tell the fixed cost from the pixels': they keep their proportion.
    assert learned.seconds_per_pass * before.seconds_per_pixel_iteration == pytest.approx(
        before.seconds_per_pass * learned.seconds_per_pixel_iteration
    )
    # A preview's one small scale teaches nothing: its time per unit of work is not the whole job's.
    engine.stylize(CONTENT, [Style(STYLE)], replace(FAST, size=128, preview=True))
    assert engine.cost_model == learned


def test_a_new_engine_plans_at_the_pace_the_last_job_here_measured(
    original_weights, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The plug-in's server ends itself when unused: the next one must not plan its first job (and the
    dialog quote it) at the first guess's pace again, which was fitted on another machine."""
    kept = tmp_path / "costs.json"
    machine = CostModel(1.0, 5e-4)  # a job of FAST takes many seconds: enough to teach

    def engine_keeping_its_pace(precision: str = "auto") -> Engine:
        return Engine(original_weights, torch.device("cpu"), precision, learned_costs=LearnedCosts(kept))

    first = engine_keeping_its_pace()
    guess = FIRST_GUESS_COSTS[("cpu", first.precision)]
    assert first.cost_model == guess
    FakeClock(first, monkeypatch, machine)
    first.stylize(CONTENT, [Style(STYLE)], FAST)
    assert first.cost_model != guess
    job = ((960, 1280), [(512, 512)], Options(size=1024))
    again = engine_keeping_its_pace()
    assert again.cost_model == first.cost_model
    assert again.plan(*job).estimate == first.plan(*job).estimate
    # Another precision runs at another pace: it starts from its own guess.
    other_precision = "fp32" if first.precision == "bf16" else "bf16"
    assert engine_keeping_its_pace(other_precision).cost_model == FIRST_GUESS_COSTS[("cpu", other_precision)]
    # A damaged file costs one job planned from the guess; that job writes it anew.
    kept.write_text('{"cpu: half a file')
    damaged = engine_keeping_its_pace()
    assert damaged.cost_model == guess
    FakeClock(damaged, monkeypatch, replace(machine, seconds_per_pass=0.2))
    damaged.stylize(CONTENT, [Style(STYLE)], FAST)
    assert damaged.cost_model not in (guess, first.cost_model)
    assert engine_keeping_its_pace().cost_model == damaged.cost_model


def test_a_new_machine_is_planned_at_its_own_pace_before_its_first_job(
    original_weights, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The first guess was fitted on another machine: on one three times slower the dialog's first quote
    would be a third of the truth. Warming up, a new engine times a small job and plans at that speed;
    the next engine here reads it and measures nothing."""
    kept = tmp_path / "costs.json"
    fresh = Engine(original_weights, torch.device("cpu"), learned_costs=LearnedCosts(kept))
    guess = fresh.cost_model
    machine = CostModel(3 * guess.seconds_per_pass, 3 * guess.seconds_per_pixel_iteration)
    FakeClock(fresh, monkeypatch, machine)
    fresh.warm_up()
    assert fresh.cost_model.seconds_per_pass == pytest.approx(machine.seconds_per_pass)
    assert fresh.cost_model.seconds_per_pixel_iteration == pytest.approx(machine.seconds_per_pixel_iteration)

    known = Engine(original_weights, torch.device("cpu"), learned_costs=LearnedCosts(kept))
    FakeClock(known, monkeypatch, CostModel(1.0, 1e-3))  # would be learned, were anything timed
    known.warm_up()
    assert known.cost_model == fresh.cost_model


def test_the_memory_estimate_counts_a_style_scaled_up(engine: Engine):
    """A style drawn at 8× the working size costs far more memory than the optimisation itself."""
    plain = estimate(engine, Options(size=128), (1000, 1000))
    scaled = estimate(engine, Options(size=128, style_scale=8), (1000, 1000))
    assert scaled.peak_bytes > 8 * plain.peak_bytes
    assert scaled.peak_bytes > 1024 * 1024 * 300  # a 1024² forward pass, at least 300 B a pixel


def test_a_preview_is_the_whole_jobs_own_beginning(engine: Engine, monkeypatch: pytest.MonkeyPatch):
    """`preview`: the job's first scale as the whole job runs it (same seed, targets and steps), so that
    what the preview shows is what OK paints, at a fraction of the cost."""
    from impasto.engine import run as run_module

    options = replace(FAST, size=200, iterations=4, recipe=replace(DEFAULT, min_pixels=32 * 24))
    preview_options = replace(options, preview=True)
    whole_plan = engine.plan((48, 64), [(64, 64)], options)
    preview_plan = engine.plan((48, 64), [(64, 64)], preview_options)
    first = whole_plan.scales[:1]
    assert preview_plan.scales == first and len(first) < len(whole_plan.scales)
    assert preview_plan.estimate.seconds < whole_plan.estimate.seconds / 4

    after_scale: list[torch.Tensor] = []
    optimise = run_module.Run.optimise_scale
    monkeypatch.setattr(
        run_module.Run,
        "optimise_scale",
        lambda self, index, image: after_scale.append(optimise(self, index, image)) or after_scale[-1],
    )
    engine.stylize(CONTENT, [Style(STYLE)], options)
    preview = engine.stylize(CONTENT, [Style(STYLE)], preview_options)
    assert tuple(preview.shape[2:]) == first[-1].size
    assert torch.equal(preview, after_scale[len(first) - 1].cpu())


def test_engines_forming_grams_at_once_keep_the_lowered_matmul_precision_until_the_last_is_done():
    """Two bf16 engines in two worker threads, interleaved: the first to finish must neither restore the
    setting under the other's Grams nor the other restore the lowered value for good."""
    first, second = (Engine(None, torch.device("cpu"), "bf16") for _ in range(2))
    before = torch.backends.mkldnn.matmul.fp32_precision
    with contextlib.ExitStack() as first_grams:
        first_grams.enter_context(first.gram_matmuls())
        with contextlib.ExitStack() as second_grams:
            second_grams.enter_context(second.gram_matmuls())
            first_grams.close()
            assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"  # the second forms its Grams
    assert torch.backends.mkldnn.matmul.fp32_precision == before
