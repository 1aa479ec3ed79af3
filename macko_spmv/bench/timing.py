"""Every timer the benchmarks use, in one place.

- :class:`FlushedCudaTimer`: CUDA events around one call, with L2 emptied of
  everything useful before each call (the "flushed" timing).
- :class:`BackToBackTimer`: calls on K copies of the operands, one after the
  other, captured once as a CUDA graph and replayed (the "graph" timing); on
  the CPU the same rounds run as a plain loop.
- :class:`CpuTimer`: ``time.perf_counter`` around one call, no cache flush.
- :func:`wall_clock`: seconds of one call with the device synchronised on
  both sides (the phases of the end-to-end benchmark).

A timer's ``times_us(call)`` returns every timed run in microseconds and
``median_us(call)`` their median; ``description`` says how it times, for the
results' metadata. ``call`` is a function of no arguments.
"""

import math
import random
import statistics
import time
from dataclasses import dataclass

import torch

# Used when the device does not report its L2 size: the H100's 50 MB.
FALLBACK_L2_BYTES = 50 * 1000 * 1000
# A spin before the start event, about 50 us at H100 clocks: longer than the
# host needs to enqueue one op (or launch one graph), so the events time the
# GPU's work alone, not Python and launch overhead (which CUDA graphs remove
# in real decoding).
HOST_HEAD_START_CYCLES = 100_000
# Used when the CPU does not say how large its last-level cache is.
FALLBACK_CPU_CACHE_BYTES = 32 * 2**20


def describe_bytes(nbytes):
    """1.5 GiB, 60 MiB, 32 KiB: a size in the largest binary unit that fits."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes} B"


def synchronize(device):
    """Waits for the device's queued work (nothing to wait for on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_clock(device, function, *args, **kwargs):
    """(function(*args, **kwargs), seconds it took), with ``device``
    synchronised before and after so that queued GPU work is counted."""
    synchronize(device)
    start = time.perf_counter()
    result = function(*args, **kwargs)
    synchronize(device)
    return result, time.perf_counter() - start


def l2_cache_bytes(device):
    """The L2 size a CUDA device reports (FALLBACK_L2_BYTES if it does not)."""
    properties = torch.cuda.get_device_properties(torch.device(device))
    return getattr(properties, "L2_cache_size", 0) or FALLBACK_L2_BYTES


def cpu_cache_bytes():
    """The largest CPU cache Linux reports for cpu0 (the last level), or
    FALLBACK_CPU_CACHE_BYTES."""
    import glob

    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path) as file:
                text = file.read().strip().upper()
        except OSError:
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        scale = units.get(text[-1:], 1)
        digits = text[:-1] if text[-1:] in units else text
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes) if sizes else FALLBACK_CPU_CACHE_BYTES


def perf_counter_times_us(count, call):
    """Microseconds of each of ``count`` calls, by time.perf_counter."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e6)
    return times


def cuda_event_times_us(device, count, call, before=None):
    """Microseconds of each of ``count`` calls on the GPU, by CUDA events:
    ``before()`` (if given), a GPU spin, the start event, the call, the end
    event, all queued before one synchronisation. The spin lets the host
    enqueue the call before the start event fires."""
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
    for start, end in zip(starts, ends):
        if before is not None:
            before()
        torch.cuda._sleep(HOST_HEAD_START_CYCLES)
        start.record()
        call()
        end.record()
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) * 1e3 for start, end in zip(starts, ends)]


def interleaved_times_ms(ops, runs, min_runs, budget_s, warmup=2):
    """Wall times (ms) of each op in `ops` (name -> callable), measured in
    rounds that call every op once, so that a slow spell of a shared machine
    falls on all of them alike: `runs` rounds, or, where a round takes long,
    at least min_runs and as many more as fit in budget_s. Each round calls
    the ops in a fresh order (a shuffle seeded the same in every call), so
    that no op always follows the same one: on the CPU the op right after
    a dense product measured ~5% slower than the same op later in the
    round, and a fixed order (or a rotation of it) put that cost on one op
    only."""
    for op in ops.values():
        for _ in range(warmup):
            op()
    order = list(ops)
    shuffler = random.Random(0)
    times = {name: [] for name in ops}
    start = time.perf_counter()
    for done in range(runs):
        if done >= min_runs and time.perf_counter() - start > budget_s:
            break
        shuffler.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            ops[name]()
            times[name].append(1e3 * (time.perf_counter() - t0))
    return times


class CpuTimer:
    """Wall time of one call with time.perf_counter; no cache flush."""

    description = "none (cpu): time.perf_counter around each call"

    def __init__(self, repeats, warmup):
        self.repeats = repeats
        self.warmup = warmup

    def times_us(self, call):
        for _ in range(self.warmup):
            call()
        return perf_counter_times_us(self.repeats, call)

    def median_us(self, call):
        return statistics.median(self.times_us(call))


class FlushedCudaTimer:
    """CUDA events around one call, L2 flushed before every timed run.

    Before each run it writes a buffer of twice the L2 size, which evicts
    whatever the previous run left there, then reads a second buffer of the
    same size, which pushes the written (dirty) lines out so the timed call
    does not pay for their write-back: the call finds L2 full of clean,
    unrelated lines, as it does inside a model after the previous layers.
    A GPU spin then lets the host enqueue the call before the start event.
    """

    def __init__(self, device, repeats, warmup):
        self.device = torch.device(device)
        self.repeats = repeats
        self.warmup = warmup
        self.l2_bytes = l2_cache_bytes(self.device)
        self.flush_buffer = torch.empty(2 * self.l2_bytes, dtype=torch.uint8, device=self.device)
        self.clean_buffer = torch.ones(2 * self.l2_bytes // 4, dtype=torch.float32, device=self.device)

    @property
    def description(self):
        return (f"write {self.flush_buffer.numel() / 2**20:.0f} MiB (2x L2) before every timed run, then read "
                "another 2x L2 so no dirty line is left, then a GPU spin so that host overhead stays out of the time")

    def flush(self):
        self.flush_buffer.zero_()
        self.clean_buffer.sum()

    def times_us(self, call):
        for _ in range(self.warmup):
            call()
        torch.cuda.synchronize(self.device)
        return cuda_event_times_us(self.device, self.repeats, call, before=self.flush)

    def median_us(self, call):
        return statistics.median(self.times_us(call))


# --------------------------------------------------------------------------
# Back to back


@dataclass
class BackToBackResult:
    """One back-to-back measurement.

    us_per_call: median over replays of (replay time / calls), NaN when not
      measured; copies: K, the operand copies the calls rotate through;
      calls: calls per replay (rounds x K); note: why it is NaN, or what
      to know about it ("" when nothing).
    """

    us_per_call: float
    copies: int = 0
    calls: int = 0
    note: str = ""


class _CudaGraphRunner:
    """Captures the rounds once as a CUDA graph; a replay is one launch."""

    def __init__(self, device):
        self.device = device

    def warm_up(self, run_rounds):
        # On a side stream, as CUDA graph capture wants: first calls create
        # handles and workspaces, which must not happen inside the capture.
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            run_rounds(1)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)

    def prepare(self, run_rounds, rounds):
        stream = torch.cuda.current_stream(self.device)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                run_rounds(rounds)
        except BaseException:
            # torch.cuda.graph leaves its capture stream current when the
            # capture fails to end: put the caller's stream back.
            torch.cuda.set_stream(stream)
            raise
        return graph.replay, graph

    def replay_times_us(self, replay, replays):
        return cuda_event_times_us(self.device, replays, replay)


class _LoopRunner:
    """The CPU's stand-in for a graph: a replay runs the rounds again."""

    def __init__(self, device):
        self.device = device

    def warm_up(self, run_rounds):
        run_rounds(1)

    def prepare(self, run_rounds, rounds):
        return (lambda: run_rounds(rounds)), None

    def replay_times_us(self, replay, replays):
        return perf_counter_times_us(replays, replay)


class BackToBackTimer:
    """Time per call of calls that run back to back on different operands.

    For one op it builds K copies of the operands, so many that together they
    exceed ``cache_factor`` (3) times the cache (the GPU's L2, or the CPU's
    last-level cache), and at least 2. One round calls the op once on each
    copy, with the same x; on a GPU the rounds are captured as one CUDA
    graph, and each replay of the graph is timed with CUDA events (after a
    GPU spin, so that the launch stays out of the time). The result is the
    median over ``replays`` replays of (replay time / calls): the cost of a
    call when layers run one after another, as in decoding, with the fixed
    costs of each call (launch, ramp-up, tail) but nothing left in cache by
    the previous call on the same operands.

    Rounds: at least ``min_rounds`` and enough for ``min_calls`` calls per
    replay, but fewer when a replay would then take longer than
    ``max_replay_seconds`` (judged from one eager round), and at least one.

    Memory: the copies are built for one op at a time and freed after it.
    Their total is capped at ``max_bytes``; an op whose K copies would need
    more is not measured (NaN, with a note). K is also capped at
    ``max_copies``; an op with so small operands that the cap binds is
    measured, with a note that its copies fit in ``cache_factor`` x cache.
    A call that cannot be captured in a CUDA graph (torch's CSR matmul may
    not) gives NaN with the error as the note, not an exception.
    """

    def __init__(self, device, replays=20, warmup=1, min_calls=64, min_rounds=3, max_replay_seconds=0.05,
                 max_bytes=8 * 2**30, max_copies=1024, cache_bytes=None, cache_factor=3):
        self.device = torch.device(device)
        self.replays = replays
        self.warmup = warmup
        self.min_calls = min_calls
        self.min_rounds = min_rounds
        self.max_replay_seconds = max_replay_seconds
        self.max_bytes = max_bytes
        self.max_copies = max_copies
        self.cache_factor = cache_factor
        on_gpu = self.device.type == "cuda"
        if cache_bytes is None:
            cache_bytes = l2_cache_bytes(self.device) if on_gpu else cpu_cache_bytes()
        self.cache_bytes = cache_bytes
        self.runner = _CudaGraphRunner(self.device) if on_gpu else _LoopRunner(self.device)

    @property
    def description(self):
        how = ("captured as one CUDA graph, each replay timed with CUDA events after a GPU spin"
               if self.device.type == "cuda" else "a plain loop (no graph on the CPU), timed with time.perf_counter")
        return (f"back to back: K >= 2 copies of the operands, together more than {self.cache_factor}x the "
                f"{describe_bytes(self.cache_bytes)} cache (K <= {self.max_copies}, copies <= "
                f"{describe_bytes(self.max_bytes)}), rounds of one call per copy with the same x, {how}; median of "
                f"{self.replays} replays of (replay time / calls)")

    def copies_for(self, copy_bytes):
        """K: the fewest copies of ``copy_bytes`` each that together exceed
        cache_factor x the cache, at least 2 and at most max_copies."""
        needed = math.floor(self.cache_factor * self.cache_bytes / max(copy_bytes, 1)) + 1
        return min(max(2, needed), self.max_copies)

    def measure(self, make_call, copy_bytes, check=None):
        """Times an op back to back.

        Args:
          make_call: function of no arguments that builds one copy of the
            operands and returns a call (a function of no arguments that runs
            the op on that copy and returns its output); called K times.
          copy_bytes: bytes of one copy (what must not stay in cache).
          check: None, or a function that gets the output of the last call
            of a replay (on a GPU: from the graph itself) and raises if it
            is wrong.

        Returns:
          BackToBackResult.
        """
        copies = self.copies_for(copy_bytes)
        if copies * copy_bytes > self.max_bytes:
            return BackToBackResult(math.nan, copies, 0, (
                f"not measured: {copies} copies of {describe_bytes(copy_bytes)} exceed the "
                f"{describe_bytes(self.max_bytes)} cap on copies (--graph-max-bytes)"))
        note = ""
        if copies * copy_bytes <= self.cache_factor * self.cache_bytes:
            note = (f"{copies} copies (the cap) hold only {describe_bytes(copies * copy_bytes)}, within "
                    f"{self.cache_factor}x the cache: calls may hit the cache")
        try:
            calls = [make_call() for _ in range(copies)]
        except torch.OutOfMemoryError as error:
            return BackToBackResult(math.nan, copies, 0, f"not measured: out of memory for the copies: {error}")
        last_output = []

        def run_rounds(rounds):
            last_output.clear()
            output = None
            for _ in range(rounds):
                for call in calls:
                    output = call()
            last_output.append(output)

        for _ in range(max(1, self.warmup)):
            self.runner.warm_up(run_rounds)
        _, round_seconds = wall_clock(self.device, run_rounds, 1)  # one eager round, to size the graph
        rounds = max(self.min_rounds, math.ceil(self.min_calls / copies))
        if round_seconds > 0:
            rounds = max(1, min(rounds, math.floor(self.max_replay_seconds / round_seconds)))
        try:
            replay, graph = self.runner.prepare(run_rounds, rounds)
        except torch.OutOfMemoryError as error:
            return BackToBackResult(math.nan, copies, 0, f"not measured: out of memory in the capture: {error}")
        except RuntimeError as error:
            synchronize(self.device)
            first_line = (str(error).strip().splitlines() or [""])[0]
            return BackToBackResult(math.nan, copies, 0,
                                    f"not measured: could not be captured: {type(error).__name__}: {first_line}")
        replay()
        synchronize(self.device)
        if check is not None:
            check(last_output[0])
        times = self.runner.replay_times_us(replay, self.replays)
        # The copies and the graph (with its memory pool) go with this frame.
        return BackToBackResult(statistics.median(times) / (rounds * copies), copies, rounds * copies, note)
