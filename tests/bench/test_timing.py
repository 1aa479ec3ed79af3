"""The benchmarks' timers (macko_spmv/bench/timing.py).

The CPU timers run for real. The CUDA paths (flushed events, graph capture
and replay) run here against a stand-in for torch.cuda that keeps a fake
clock: that checks their logic (what is flushed, spun, recorded, captured
and replayed, in which order, and the arithmetic) without a GPU; the GPU
tests at the end run them on a real device.
"""

import contextlib
import math

import pytest
import torch

import macko_spmv
from conftest import random_pruned, requires_cuda
from macko_spmv.bench import timing
from macko_spmv.bench.matrices import ResultMismatchError


def test_cpu_timer_times_each_call():
    calls = []
    timer = timing.CpuTimer(repeats=7, warmup=2)
    times = timer.times_us(lambda: calls.append(1))
    assert len(times) == 7 and len(calls) == 9 and all(t >= 0 for t in times)
    assert timer.median_us(lambda: None) >= 0


def test_wall_clock_returns_the_result_and_seconds():
    result, seconds = timing.wall_clock("cpu", lambda a, b: a + b, 2, b=3)
    assert result == 5 and seconds >= 0


def test_interleaved_times_vary_which_op_follows_which():
    calls = []
    ops = {name: (lambda name=name: calls.append(name)) for name in "abcd"}
    times = timing.interleaved_times_ms(ops, runs=40, min_runs=40, budget_s=0, warmup=1)
    assert {name: len(t) for name, t in times.items()} == {name: 40 for name in "abcd"}
    rounds = [calls[4 + 4 * r:8 + 4 * r] for r in range(40)]  # after one warm-up call each
    assert all(sorted(r) == list("abcd") for r in rounds)
    followers = {(r[i], r[i + 1]) for r in rounds for i in range(3)}
    assert len(followers) == 12  # every op has followed every other within a round


def test_copies_exceed_three_caches_and_at_least_two():
    timer = timing.BackToBackTimer("cpu", cache_bytes=1000, max_copies=50)
    assert timer.copies_for(10_000) == 2  # one copy alone is larger than 3x the cache: still 2
    assert timer.copies_for(1000) == 4  # 4 x 1000 > 3000
    assert timer.copies_for(999) == 4  # 4 x 999 > 3000 >= 3 x 999
    assert timer.copies_for(1500) == 3  # 3 x 1500 > 3000 = 2 x 1500
    assert timer.copies_for(1) == 50  # capped
    for nbytes in (7, 100, 333, 2999, 3001):
        copies = timer.copies_for(nbytes)
        assert copies == 50 or (copies * nbytes > 3000 and (copies == 2 or (copies - 1) * nbytes <= 3000))


def make_counting_calls(outputs):
    """make_call for the back-to-back timer: each call returns its copy's
    index, and records it."""
    made = []

    def make_call():
        index = len(made)
        made.append(index)
        return lambda: outputs.append(index) or index

    return make_call, made


def test_back_to_back_on_the_cpu_rotates_through_the_copies():
    outputs, checked = [], []
    timer = timing.BackToBackTimer("cpu", replays=3, warmup=1, min_calls=10, min_rounds=3, cache_bytes=100)
    make_call, made = make_counting_calls(outputs)
    result = timer.measure(make_call, 40, check=checked.append)
    copies = timer.copies_for(40)
    assert copies == 8 and made == list(range(8))
    assert result.copies == 8 and result.calls == 3 * 8 and result.note == ""  # 3 rounds (min_rounds)
    assert checked == [7]  # the last call's output, from the last copy
    # warm-up round, sizing round, the first replay (checked), then 3 timed replays
    assert outputs == list(range(8)) * (1 + 1 + 3 + 3 * 3)
    assert math.isfinite(result.us_per_call) and result.us_per_call >= 0


def test_back_to_back_caps_and_notes():
    outputs = []
    timer = timing.BackToBackTimer("cpu", replays=1, cache_bytes=1000, max_copies=4, max_bytes=10_000)
    make_call, made = make_counting_calls(outputs)
    over = timer.measure(make_call, 6000)  # 2 copies of 6000 > 10000
    assert math.isnan(over.us_per_call) and "cap" in over.note and made == []  # nothing built
    small = timer.measure(make_call, 10)  # the 4-copy cap binds: 40 bytes, within 3x the cache
    assert math.isfinite(small.us_per_call) and small.copies == 4 and "may hit the cache" in small.note


def test_back_to_back_rounds_shrink_for_slow_calls(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", clock.now)
    timer = timing.BackToBackTimer("cpu", replays=5, min_calls=64, min_rounds=3, max_replay_seconds=0.05,
                                   cache_bytes=10)  # fmt: skip

    def make_call():
        return lambda: clock.advance(0.01)  # 10 ms a call

    result = timer.measure(make_call, 100)  # 2 copies: a round is 20 ms, so 2 rounds fit in 50 ms
    assert result.copies == 2 and result.calls == 4
    assert result.us_per_call == pytest.approx(10_000)
    slow = timer.measure(lambda: lambda: clock.advance(1.0), 100)  # a round of 2 s: one round
    assert slow.calls == 2 and slow.us_per_call == pytest.approx(1e6)


def test_back_to_back_check_failure_raises():
    def fail(output):
        raise ResultMismatchError("wrong")

    timer = timing.BackToBackTimer("cpu", replays=1, cache_bytes=10)
    with pytest.raises(ResultMismatchError):
        timer.measure(lambda: lambda: 0, 100, check=fail)


def test_back_to_back_multiply_on_the_cpu(gen):
    """The real op, as the benchmark calls it: a copy per call, checked."""
    W = random_pruned(64, 96, 0.3, torch.float32, gen)
    A = macko_spmv.compress(W)
    x = torch.randn(96, generator=gen)
    expected = macko_spmv.multiply(A, x)
    timer = timing.BackToBackTimer("cpu", replays=2, cache_bytes=A.nbytes)  # 4 copies

    def make_call():
        copy = macko_spmv.MackoMatrix(*(a.clone() for a in A[:3]), A.rows, A.cols)
        return lambda: macko_spmv.multiply(copy, x)

    result = timer.measure(make_call, A.nbytes, check=lambda y: torch.testing.assert_close(y, expected))
    assert result.copies == 4 and math.isfinite(result.us_per_call)


# --------------------------------------------------------------------------
# The CUDA paths against a stand-in for torch.cuda


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def now(self):
        return self.t

    def advance(self, seconds):
        self.t += seconds


class FakeCuda:
    """What timing.py calls of torch.cuda, with a clock that the fake
    device advances: each op (call, flush, spin, replay) adds its time."""

    def __init__(self, clock, log):
        self.clock, self.log = clock, log
        self.capturing = False
        self.fail_capture = None
        self.replay_seconds = 0.0
        parent = self

        class Event:
            def __init__(self, enable_timing=False):
                assert enable_timing
                self.t = None

            def record(self):
                parent.log.append("record")
                self.t = parent.clock.now()

            def elapsed_time(self, end):
                return (end.t - self.t) * 1e3  # ms, as CUDA events say

        class CUDAGraph:
            def replay(self):
                parent.log.append("replay")
                parent.clock.advance(parent.replay_seconds)

        class Stream:
            def __init__(self, device=None):
                self.device = device

            def wait_stream(self, other):
                parent.log.append("wait_stream")

        @contextlib.contextmanager
        def graph(cuda_graph):
            parent.log.append("capture begin")
            parent.capturing = True
            try:
                yield
                if parent.fail_capture:
                    raise RuntimeError(parent.fail_capture)
            finally:
                parent.capturing = False
                parent.log.append("capture end")

        @contextlib.contextmanager
        def stream(s):
            parent.log.append("side stream")
            yield

        self.Event, self.CUDAGraph, self.Stream, self.graph, self.stream = Event, CUDAGraph, Stream, graph, stream

    def current_stream(self, device=None):
        return self.Stream(device)

    def set_stream(self, stream):
        self.log.append("set_stream")

    def synchronize(self, device=None):
        self.log.append("synchronize")

    def _sleep(self, cycles):
        self.log.append("spin")

    def get_device_properties(self, device):
        class Properties:
            L2_cache_size = 1000

        return Properties()


@pytest.fixture
def fake_cuda(monkeypatch):
    clock, log = FakeClock(), []
    fake = FakeCuda(clock, log)
    for name in ("Event", "CUDAGraph", "Stream", "graph", "stream", "current_stream", "set_stream", "synchronize",
                 "_sleep", "get_device_properties"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    monkeypatch.setattr(timing.time, "perf_counter", clock.now)
    return fake


def test_flushed_timer_flushes_spins_and_times_each_call(fake_cuda):
    timer = timing.FlushedCudaTimer("cpu", repeats=5, warmup=2)  # "cpu": the buffers need a real device
    assert timer.l2_bytes == 1000
    assert timer.flush_buffer.numel() == 2000 and timer.clean_buffer.numel() * 4 == 2000
    durations = iter([0.003, 0.001, 0.002, 0.005, 0.004] + [0.0] * 2)
    flushes = []
    real_zero = timer.flush_buffer.zero_
    timer.flush_buffer.zero_ = lambda: flushes.append(fake_cuda.clock.now()) or real_zero()
    log = fake_cuda.log

    def call():
        log.append("call")
        fake_cuda.clock.advance(next(durations) if log.count("record") else 0.0)

    times = timer.times_us(call)
    assert times == pytest.approx([3000, 1000, 2000, 5000, 4000])
    assert len(flushes) == 5
    timed = log[log.index("synchronize") + 1 :]
    assert timed[:4] == ["spin", "record", "call", "record"]  # spin, then the start event right before the call
    assert timer.median_us(lambda: None) == 0.0


def test_graph_runner_warms_up_on_a_side_stream_captures_once_and_times_replays(fake_cuda):
    fake_cuda.replay_seconds = 0.006
    timer = timing.BackToBackTimer("cuda", replays=4, min_calls=12, min_rounds=3, max_replay_seconds=1.0)
    assert timer.cache_bytes == 1000  # the (fake) L2
    made, outputs, checked = [], [], []

    def make_call():
        index = len(made)
        made.append(index)
        return lambda: outputs.append(fake_cuda.capturing) or torch.tensor(float(index))

    result = timer.measure(make_call, 1500, check=checked.append)  # 3 copies of 1500 > 3000
    assert made == [0, 1, 2]
    assert result.copies == 3 and result.calls == 12  # 4 rounds: 12 calls
    assert result.us_per_call == pytest.approx(6000 / 12)
    # Eager calls: the warm-up round and the sizing round; then the capture
    # runs the 4 rounds' Python once, inside the graph.
    assert outputs == [False] * 6 + [True] * 12
    assert float(checked[0]) == 2.0  # the last call of the graph, on the last copy
    log = fake_cuda.log
    assert log.index("side stream") < log.index("capture begin") < log.index("capture end") < log.index("replay")
    assert log.count("replay") == 1 + 4 and log.count("capture begin") == 1
    first_timed = log.index("replay") + 1
    assert log[first_timed:][:4] == ["synchronize", "spin", "record", "replay"]


def test_graph_capture_failure_gives_nan_not_an_error(fake_cuda):
    fake_cuda.fail_capture = "operation not permitted when stream is capturing"
    timer = timing.BackToBackTimer("cuda", replays=2)
    result = timer.measure(lambda: lambda: torch.zeros(1), 5000)
    assert math.isnan(result.us_per_call) and result.copies == 2
    assert "could not be captured" in result.note and "not permitted" in result.note
    assert "replay" not in fake_cuda.log
    assert fake_cuda.log.index("capture end") < fake_cuda.log.index("set_stream")  # the caller's stream back


def test_graph_timer_lets_eager_errors_through(fake_cuda):
    def broken():
        raise ValueError("x must be on the matrix's device")

    timer = timing.BackToBackTimer("cuda", replays=2)
    with pytest.raises(ValueError, match="device"):
        timer.measure(lambda: broken, 5000)


# --------------------------------------------------------------------------
# On a GPU


@requires_cuda
def test_flushed_and_graph_timers_on_a_gpu(gen):
    W = random_pruned(4096, 4096, 0.5, torch.float16, gen).cuda()
    A = macko_spmv.compress(W)
    x = torch.randn(4096, generator=gen).half().cuda()
    expected = macko_spmv.multiply(A, x)
    flushed = timing.FlushedCudaTimer("cuda", repeats=20, warmup=2).median_us(lambda: macko_spmv.multiply(A, x))
    timer = timing.BackToBackTimer("cuda", replays=5)

    def make_call():
        copy = macko_spmv.MackoMatrix(*(a.clone() for a in A[:3]), A.rows, A.cols)
        return lambda: macko_spmv.multiply(copy, x)

    result = timer.measure(make_call, A.nbytes, check=lambda y: torch.testing.assert_close(y, expected))
    assert result.copies * A.nbytes > 3 * timer.cache_bytes and result.calls >= 3 * result.copies
    assert 0 < result.us_per_call < 10 * flushed and 0 < flushed < 10_000
    dense = timer.measure(lambda: (lambda copy=W.clone(): torch.mv(copy, x)), W.numel() * 2)
    assert math.isfinite(dense.us_per_call) and dense.copies >= 2
    print(f"4096x4096 d=0.5: flushed {flushed:.1f} us, back to back {result.us_per_call:.1f} us "
          f"({result.copies} copies, {result.calls} calls), cuBLAS back to back {dense.us_per_call:.1f} us")
