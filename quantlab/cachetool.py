"""What ``quantlab cache inspect | lint | diff`` compute: plain dictionaries, printed by the CLI.

Each function takes parsed range files (:mod:`quantlab.formats.ranges`) and returns a
JSON-ready dict, so ``--json`` output and the human-readable text come from the same numbers.
"""

from __future__ import annotations

import math
import re
from typing import Optional

import numpy as np

from .formats.ranges import RangeFile
from .formats.trtcache import ALGORITHMS, FLOAT32_TINY, describe_header
from .graph import ModelGraph

GENERATED_NAME = re.compile(r"\(Unnamed Layer\* \d+\)|^\(Unnamed")
CLEAN, WARNINGS, ERRORS = 0, 1, 2
# Beyond this an activation range is almost surely an artefact (float16 tops out at 65504).
HUGE_AMAX = 1e6
# Below this an activation range is almost surely an artefact too: its INT8 step (the scale,
# amax / 127) is smaller than the smallest positive float16, 2**-24 (about 6e-8), so in an
# engine with FP16 layers (--fp16/--best, the usual pairing with --int8) the tensor's lowest
# INT8 levels dequantize to 0 and the rest lose bits. Real activations are rarely this narrow;
# a dead channel, an all-zero tensor given a placeholder range, or a corrupted (e.g. cut short)
# hex scale are the usual causes. 127 * 2**-24 is about 7.6e-6.
TINY_AMAX = 127 * 2.0**-24
# A float32 scale below the smallest normal float32 (2**-126, amax below about 1.5e-36) is
# subnormal: GPU kernels flush it to zero (and its reciprocal, the quantization multiplier,
# overflows float32), so the tensor quantizes as if its scale were 0. An error, like a zero scale.
SUBNORMAL_SCALE = FLOAT32_TINY


def inspect_ranges(ranges: RangeFile, top: int = 5) -> dict:
    """Header, version, algorithm, entry count and the amax distribution of a range file."""
    amax = ranges.amax
    values = np.array(list(amax.values()), dtype=np.float64)
    finite = values[np.isfinite(values) & (values > 0)]
    ordered = sorted(((v, n) for n, v in amax.items() if math.isfinite(v) and v > 0), reverse=True)
    info = {
        "file": ranges.source,
        "format": ranges.format,
        "description": ranges.description,
        "entries": len(amax),
        "amax": {
            "min": float(finite.min()) if len(finite) else None,
            "median": float(np.median(finite)) if len(finite) else None,
            "max": float(finite.max()) if len(finite) else None,
            "zero": int((values == 0).sum()),
            "negative": int((values < 0).sum()),
            "infinite": int(np.isinf(values).sum()),
            "nan": int(np.isnan(values).sum()),
        },
        "largest": [{"tensor": n, "amax": v} for v, n in ordered[:top]],
        "smallest": [{"tensor": n, "amax": v} for v, n in ordered[::-1][:top]],
    }
    if ranges.trt is not None:
        version = ranges.trt.version
        info["header"] = ranges.trt.header
        info["tensorrt_version"] = ".".join(map(str, version)) if version else "4.x"
        info["algorithm"] = ranges.trt.algorithm  # None for a TensorRT 4 header: it records none
        info["header_description"] = describe_header(ranges.trt.header)
    if ranges.format == "quantlab":
        info["method"] = ranges.extra.get("method")
        info["params"] = ranges.extra.get("params")
    return info


def lint_ranges(ranges: RangeFile, graph: Optional[ModelGraph] = None,
                trt_version: Optional[tuple] = None) -> dict:
    """Problems that would make TensorRT build a wrong engine or ignore the cache.

    Errors: zero, negative, NaN or infinite scales, and positive scales that are subnormal
    (or zero) in float32 (below 2**-126: GPUs flush them to zero); a cache for a TensorRT that
    cannot use it (TensorRT 11 has no implicit calibration). Warnings: ranges above
    :data:`HUGE_AMAX` or below :data:`TINY_AMAX` (a float16-representable INT8 step), entries
    naming no tensor of the model, model activations without an entry, generated TensorRT layer
    names, an unknown algorithm, a header version other than the TensorRT it is meant for.

    The float32 scale of an entry is the cache's own for a TensorRT cache, else
    ``float32(amax / 127)`` as a TensorRT cache or ONNX Runtime would compute it.
    """
    findings: list[dict] = []

    def add(level: str, code: str, message: str, tensors: Optional[list] = None) -> None:
        entry = {"level": level, "code": code, "message": message}
        if tensors:
            entry["tensors"] = tensors
        findings.append(entry)

    for code, test, words in (
        ("zero-scale", lambda v: v == 0, "a zero scale (TensorRT maps every value to 0)"),
        ("negative-scale", lambda v: v < 0, "a negative scale"),
        ("nan-scale", math.isnan, "a NaN scale"),
        ("infinite-scale", math.isinf, "an infinite scale (every value quantizes to 0)"),
    ):
        bad = [n for n, v in ranges.amax.items() if test(v)]
        if bad:
            add("error", code, f"{len(bad)} tensor(s) with {words}", bad)
    scales = _float32_scales(ranges)
    subnormal = [n for n, v in ranges.amax.items()
                 if math.isfinite(v) and v > 0 and scales[n] < SUBNORMAL_SCALE]
    if subnormal:
        add("error", "subnormal-scale",
            f"{len(subnormal)} tensor(s) with a float32 scale below {SUBNORMAL_SCALE:.3g} (amax below "
            f"{SUBNORMAL_SCALE * 127:.3g}): such a scale is subnormal, and GPUs flush it to zero, so "
            "TensorRT quantizes the tensor as with a zero scale", subnormal)
    tiny = [n for n, v in ranges.amax.items()
            if math.isfinite(v) and 0 < v < TINY_AMAX and scales[n] >= SUBNORMAL_SCALE]
    if tiny:
        add("warning", "tiny-range",
            f"{len(tiny)} tensor(s) with amax below {TINY_AMAX:.3g} (an INT8 step below float16's "
            "smallest value, 6e-8): with FP16 layers their lowest INT8 levels become 0; often a dead "
            "tensor, a placeholder range or a damaged scale", tiny)
    huge = [n for n, v in ranges.amax.items() if math.isfinite(v) and v > HUGE_AMAX]
    if huge:
        add("warning", "huge-range",
            f"{len(huge)} tensor(s) with amax above {HUGE_AMAX:g} (often a masking constant such as "
            "-3.4e38 was calibrated): every ordinary value of such a tensor quantizes to 0", huge)

    generated = [n for n in ranges.amax if GENERATED_NAME.search(n)]
    if generated:
        add("warning", "generated-names",
            f"{len(generated)} entries use TensorRT-generated layer names such as {generated[0]!r}: they "
            "belong to one TensorRT network build and match no ONNX tensor", generated)

    if ranges.trt is not None:
        algorithm = ranges.trt.algorithm
        if algorithm is not None and algorithm not in ALGORITHMS:
            add("warning", "unknown-algorithm", f"header algorithm {algorithm!r} is none of {', '.join(ALGORITHMS)}")
        if trt_version is not None:
            header_version = ranges.trt.version
            if trt_version[0] >= 11:
                add("error", "no-implicit-int8",
                    f"TensorRT {'.'.join(map(str, trt_version))} removed implicit INT8 calibration and "
                    "reads no calibration cache: convert it with 'quantlab export-qdq' to a Q/DQ model")
            elif header_version is None:
                add("warning", "version-mismatch",
                    f"the cache has a TensorRT 4 header ('1'); TensorRT {trt_version[0]}.{trt_version[1]} "
                    "expects TRT-<version>-<algorithm> and will recalibrate")
            elif header_version[:2] != tuple(trt_version[:2]):
                add("warning", "version-mismatch",
                    f"the header says TensorRT {'.'.join(map(str, header_version))}, the target is "
                    f"{'.'.join(map(str, trt_version))}: TensorRT may ignore the cache and recalibrate; "
                    "rewrite the header with 'quantlab cache convert --to trt --trt-version ...'")

    if graph is not None:
        names = set(graph.activations)
        unknown = [n for n in ranges.amax if n not in names and n not in generated]
        missing = [n for n in graph.activations if n not in ranges.amax]
        if unknown:
            add("warning", "unknown-tensors",
                f"{len(unknown)} of {len(ranges.amax)} entries name no tensor of the model", unknown)
        if missing:
            add("warning", "missing-tensors",
                f"{len(missing)} of {len(graph.activations)} model activations have no entry: TensorRT "
                "keeps them in higher precision or fails the INT8 build", missing)

    status = ERRORS if any(f["level"] == "error" for f in findings) else (
        WARNINGS if findings else CLEAN)
    return {"file": ranges.source, "format": ranges.format, "entries": len(ranges.amax),
            "status": ["clean", "warnings", "errors"][status], "exit_code": status, "findings": findings}


def _float32_scales(ranges: RangeFile) -> dict[str, float]:
    """The float32 scale TensorRT uses for each entry (the cache's own, else float32(amax / 127))."""
    if ranges.trt is not None:
        return dict(ranges.trt.scales)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        return {n: float(np.float32(v / 127.0)) if math.isfinite(v) else v for n, v in ranges.amax.items()}


def diff_ranges(a: RangeFile, b: RangeFile, top: int = 10, tolerance: float = 0.01) -> dict:
    """Per-tensor amax ratio b/a for the tensors both files hold, and what only one holds."""
    common = [n for n in a.amax if n in b.amax]
    rows = []
    for name in common:
        x, y = a.amax[name], b.amax[name]
        ratio = y / x if x not in (0.0,) and math.isfinite(x) and math.isfinite(y) else float("nan")
        rows.append((name, x, y, ratio))
    ratios = np.array([r[3] for r in rows], dtype=np.float64)
    valid = np.isfinite(ratios) & (ratios > 0)
    log2 = np.abs(np.log2(ratios[valid])) if valid.any() else np.array([])
    differing = [r for r in rows if not (math.isfinite(r[3]) and abs(r[3] - 1) <= tolerance)]
    worst = sorted(rows, key=lambda r: -abs(math.log2(r[3])) if math.isfinite(r[3]) and r[3] > 0 else -math.inf)
    return {
        "a": {"file": a.source, "format": a.format, "entries": len(a.amax)},
        "b": {"file": b.source, "format": b.format, "entries": len(b.amax)},
        "common": len(common),
        "only_in_a": [n for n in a.amax if n not in b.amax],
        "only_in_b": [n for n in b.amax if n not in a.amax],
        # Identical means the same float32 scale: what TensorRT would use.
        "identical": sum(1 for r in rows if np.float32(r[1] / 127) == np.float32(r[2] / 127)),
        "differing_beyond_tolerance": len(differing),
        "tolerance": tolerance,
        "ratio_b_over_a": {
            "median": float(np.median(ratios[valid])) if valid.any() else None,
            "min": float(ratios[valid].min()) if valid.any() else None,
            "max": float(ratios[valid].max()) if valid.any() else None,
            "median_abs_log2": float(np.median(log2)) if len(log2) else None,
            "undefined": int((~valid).sum()),
        },
        "largest_disagreements": [{"tensor": n, "a": x, "b": y, "ratio": r} for n, x, y, r in worst
                                  if np.float32(x / 127) != np.float32(y / 127)][:top],
    }
