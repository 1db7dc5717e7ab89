"""The histogram fold of :mod:`quantlab.device.histogram` as two fused Triton kernels (CUDA, float32).

The torch fold reads each activation a dozen times (one torch op a pass); on a GPU that is most
of the cost of collection. Here one kernel reads it once for the statistics (NaN and Inf counts, the
largest finite magnitude, the extremes as order keys) and one reads it once more to count bins:
each program walks its share of the tensor, counts in registers (``tl.histogram``) and adds its
counts to the tensor's with one atomic per bin at the end.

The rules are the torch fold's, written on the same bits: the magnitude and order keys from the
integer view, the exponent from ``frexp`` of the largest magnitude, the scale as two normal powers
of two built from their exponent bits, truncation as the floor; NaN and Inf are masked out of the
count instead of moved out of bin 0. ``tests/test_device.py`` holds the two folds to the CPU kernel
on the same adversarial values. Used for float32 tensors on CUDA with at most ``MAX_BINS`` bins
(the program's counts live in registers); everything else takes the torch fold.
"""

from __future__ import annotations

from typing import Optional

MAX_BINS = 4096
BLOCK = 4096
PROGRAMS_PER_SM = 4
_compiled: Optional[tuple] = None
_unavailable: Optional[str] = None


def available() -> bool:
    """Whether Triton compiles here (imported once; a failure is remembered, and the torch fold used)."""
    return _kernels() is not None


def _kernels() -> Optional[tuple]:
    global _compiled, _unavailable
    if _compiled is not None or _unavailable is not None:
        return _compiled
    try:
        import triton
        import triton.language as tl
    except ImportError as exc:
        _unavailable = f"triton is not installed ({exc})"
        return None

    @triton.jit
    def statistics(bits_ptr, n, stats_ptr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        step = tl.num_programs(0) * BLOCK
        nan = tl.zeros([BLOCK], dtype=tl.int32)
        inf = tl.zeros([BLOCK], dtype=tl.int32)
        top = tl.zeros([BLOCK], dtype=tl.int32)
        low = tl.full([BLOCK], 2147483647, dtype=tl.int32)
        high = tl.full([BLOCK], -2147483648, dtype=tl.int32)
        for start in range(pid * BLOCK, n, step):
            offsets = start + tl.arange(0, BLOCK)
            inside = offsets < n
            bits = tl.load(bits_ptr + offsets, mask=inside, other=0)
            magnitude = bits & 0x7FFFFFFF
            finite = (magnitude < 0x7F800000) & inside
            nan += ((magnitude > 0x7F800000) & inside).to(tl.int32)
            inf += ((magnitude == 0x7F800000) & inside).to(tl.int32)
            top = tl.maximum(top, tl.where(finite, magnitude, 0))
            key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
            low = tl.minimum(low, tl.where(finite, key, 2147483647))
            high = tl.maximum(high, tl.where(finite, key, -2147483648))
        tl.atomic_add(stats_ptr + 0, tl.sum(nan, axis=0))
        tl.atomic_add(stats_ptr + 1, tl.sum(inf, axis=0))
        tl.atomic_max(stats_ptr + 2, tl.max(top, axis=0))
        tl.atomic_min(stats_ptr + 3, tl.min(low, axis=0))
        tl.atomic_max(stats_ptr + 4, tl.max(high, axis=0))

    @triton.jit
    def count(bits_ptr, n, shift_ptr, counts_ptr, BLOCK: tl.constexpr, BINS: tl.constexpr):
        pid = tl.program_id(0)
        step = tl.num_programs(0) * BLOCK
        shift = tl.load(shift_ptr)
        first = tl.minimum(tl.maximum(shift, -126), 127)
        second = tl.minimum(tl.maximum(shift - first, -126), 127)
        scale1 = ((first + 127) << 23).to(tl.float32, bitcast=True)
        scale2 = ((second + 127) << 23).to(tl.float32, bitcast=True)
        counts = tl.zeros([BINS], dtype=tl.int32)
        for start in range(pid * BLOCK, n, step):
            offsets = start + tl.arange(0, BLOCK)
            inside = offsets < n
            magnitude = tl.load(bits_ptr + offsets, mask=inside, other=0) & 0x7FFFFFFF
            finite = (magnitude < 0x7F800000) & inside
            scaled = magnitude.to(tl.float32, bitcast=True) * scale1 * scale2
            index = tl.where(finite, scaled, 0.0).to(tl.int32)
            counts += tl.histogram(index, BINS, mask=finite)
        tl.atomic_add(counts_ptr + tl.arange(0, BINS), counts)

    _compiled = (statistics, count)
    return _compiled


def fold(flat, bins: int):
    """The statistics of float32 ``flat`` (1-D, on CUDA) as the torch fold's tuple of device tensors:
    (counts int64, top bits, frexp exponent, NaN count, Inf count, low key, high key)."""
    import torch

    statistics, count = _kernels()
    device = flat.device
    n = flat.numel()
    stats = _initial_statistics(device).clone()  # a copy on the device: torch.tensor(list) would wait for the GPU
    counts = torch.zeros(bins, dtype=torch.int32, device=device)
    if n:
        bits = flat.view(torch.int32)
        sms = _multiprocessors(device)
        grid = (max(1, min(-(-n // BLOCK), PROGRAMS_PER_SM * sms)),)
        statistics[grid](bits, n, stats, BLOCK=BLOCK)
        top = stats[2]
        exponent = torch.frexp(top.view(torch.float32)).exponent.to(torch.int32)
        shift = ((bins.bit_length() - 1) - exponent).reshape(1)
        count[grid](bits, n, shift, counts, BLOCK=BLOCK, BINS=bins)
    else:
        exponent = torch.zeros((), dtype=torch.int32, device=device)
    return (counts.to(torch.int64), stats[2], exponent.to(torch.int64), stats[0].to(torch.int64),
            stats[1].to(torch.int64), stats[3], stats[4])


_SMS: dict = {}


def _multiprocessors(device) -> int:
    """The GPU's multiprocessor count (1 off CUDA: Triton's interpreter), asked once per device."""
    import torch

    if device.type != "cuda":
        return 1
    if device.index not in _SMS:
        _SMS[device.index] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SMS[device.index]


_INITIAL: dict = {}


def _initial_statistics(device):
    """NaN, Inf, top, low key, high key before any value, made on ``device`` once."""
    import torch

    key = str(device)
    if key not in _INITIAL:
        _INITIAL[key] = torch.tensor([0, 0, 0, 2147483647, -2147483648], dtype=torch.int32, device=device)
    return _INITIAL[key]
