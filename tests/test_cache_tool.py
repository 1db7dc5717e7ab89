"""Cache toolchain: every real file is read, inspected, linted; conversions keep every scale."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantlab import defaults
from quantlab.cachetool import diff_ranges, inspect_ranges, lint_ranges
from quantlab.errors import CacheFormatError
from quantlab.formats.ranges import parse_ranges, read_ranges, write_ranges
from quantlab.formats.trtcache import hex_to_scale, scale_to_hex
from quantlab.graph import load_model

from conftest import run_cli

ORT_SET = {
    "shiyongming__onnxrt_trt_ep__calibration.flatbuffers": "ort-flatbuffers",
    "shiyongming__onnxrt_trt_ep__calibration.cache": "ort-cache",
    "shiyongming__onnxrt_trt_ep__calibration.json": "ort-json",
}
TRT_SET = [
    "KelvinCPChiu__FasterRCNN_etlt__cal.bin",
    "liujuanLT__model_convert__calibration.cache",
    "NicolaSansoni__DeepStream-Yolo__calib.table",
    "nt4sth__Torch-TensorRT-VGG16__calibration.cache",
    "T-K-233__Diffusion-Benchmark__int8.cache",
]


@pytest.mark.parametrize("name,fmt", sorted(ORT_SET.items()))
def test_onnxruntime_tables_are_detected_by_content(shared_caches, tmp_path, name, fmt):
    renamed = tmp_path / "whatever.bin"  # the name must not matter
    renamed.write_bytes((shared_caches / name).read_bytes())
    ranges = read_ranges(renamed)
    assert ranges.format == fmt and len(ranges.amax) == 175


def test_the_three_onnxruntime_tables_agree(shared_caches):
    tables = [read_ranges(shared_caches / name).amax for name in ORT_SET]
    assert tables[0] == tables[1] == tables[2]


@pytest.mark.parametrize("name,fmt", [(n, f) for n, f in ORT_SET.items() if f != "ort-json"])
def test_onnxruntime_tables_rewrite_byte_for_byte(shared_caches, tmp_path, name, fmt):
    ranges = read_ranges(shared_caches / name)
    out = write_ranges(tmp_path / "out", fmt, ranges.amax)
    assert out.read_bytes() == (shared_caches / name).read_bytes()


def test_onnxruntime_set_converts_to_trt_and_back_keeping_every_scale(shared_caches, tmp_path):
    original = read_ranges(shared_caches / "shiyongming__onnxrt_trt_ep__calibration.flatbuffers").amax
    trt = read_ranges(write_ranges(tmp_path / "m.cache", "trt", original))
    back = read_ranges(write_ranges(tmp_path / "back.flatbuffers", "ort-flatbuffers", trt.amax))
    for name, amax in original.items():
        assert np.float32(back.amax[name] / 127) == np.float32(amax / 127)
    # ...and from there on the scales are fixed points: TRT -> ORT -> TRT is byte-exact.
    again = write_ranges(tmp_path / "again.cache", "trt", back.amax)
    assert again.read_bytes() == (tmp_path / "m.cache").read_bytes()


@pytest.mark.parametrize("name", TRT_SET)
def test_every_real_trt_cache_inspects_and_converts_to_every_format(shared_caches, tmp_path, name):
    ranges = read_ranges(shared_caches / name)
    info = inspect_ranges(ranges)
    assert info["entries"] == len(ranges.amax) and info["header"] == ranges.trt.header
    finite = {k: v for k, v in ranges.amax.items() if np.isfinite(v) and v > 0}
    for fmt in ("ort-flatbuffers", "ort-cache", "ort-json"):
        converted = read_ranges(write_ranges(tmp_path / f"x.{fmt}", fmt, finite))
        assert {k: scale_to_hex(v / 127) for k, v in converted.amax.items()} == \
               {k: scale_to_hex(v / 127) for k, v in finite.items()}, fmt


def test_lint_reports_the_diffusion_caches_80_zero_and_7_infinite_scales(shared_caches):
    report = lint_ranges(read_ranges(shared_caches / "T-K-233__Diffusion-Benchmark__int8.cache"))
    counts = {f["code"]: len(f.get("tensors", [])) for f in report["findings"]}
    assert counts["zero-scale"] == 80 and counts["infinite-scale"] == 7
    assert counts["generated-names"] > 0 and report["exit_code"] == 2


def test_lint_of_a_clean_cache_is_clean(shared_caches):
    report = lint_ranges(read_ranges(shared_caches / "KelvinCPChiu__FasterRCNN_etlt__cal.bin"))
    assert report["status"] == "clean" and report["exit_code"] == 0


def test_lint_warns_when_the_header_version_is_not_the_target(shared_caches):
    report = lint_ranges(read_ranges(shared_caches / "KelvinCPChiu__FasterRCNN_etlt__cal.bin"),
                         trt_version=(8, 6, 1))
    assert [f["code"] for f in report["findings"]] == ["version-mismatch"] and report["exit_code"] == 1


def test_lint_says_tensorrt_11_reads_no_cache(shared_caches):
    report = lint_ranges(read_ranges(shared_caches / "liujuanLT__model_convert__calibration.cache"),
                         trt_version=(11, 0, 0))
    assert "no-implicit-int8" in {f["code"] for f in report["findings"]}


def test_lint_with_model_finds_unknown_and_missing_tensors(tmp_path):
    graph = load_model(defaults.MODEL)
    amax = {name: 1.0 for name in graph.activations[1:]}
    amax["renamed_tensor"] = 2.0
    report = lint_ranges(read_ranges(write_ranges(tmp_path / "m.cache", "trt", amax)), graph)
    found = {f["code"]: f["tensors"] for f in report["findings"]}
    assert found["unknown-tensors"] == ["renamed_tensor"] and found["missing-tensors"] == ["image"]


def test_diff_reports_ratios_and_one_sided_entries_across_formats(tmp_path):
    a = read_ranges(write_ranges(tmp_path / "a.cache", "trt", {"x": 1.0, "y": 2.0, "only_a": 3.0}))
    b = read_ranges(write_ranges(tmp_path / "b.json", "ort-json", {"x": 1.0, "y": 4.0, "only_b": 5.0}))
    report = diff_ranges(a, b)
    assert report["only_in_a"] == ["only_a"] and report["only_in_b"] == ["only_b"]
    assert report["identical"] == 1 and report["differing_beyond_tolerance"] == 1
    assert report["largest_disagreements"][0]["tensor"] == "y"
    assert report["largest_disagreements"][0]["ratio"] == pytest.approx(2.0, rel=1e-6)


def test_quantlab_table_is_a_range_file_too(tmp_path):
    proc = run_cli("calibrate", "--num-samples", "16", "-o", "m.cache", "-q", cwd=tmp_path, check=True)
    assert proc.returncode == 0
    table = read_ranges(tmp_path / "m.quantlab.json")
    cache = read_ranges(tmp_path / "m.cache")
    assert table.format == "quantlab"
    assert diff_ranges(table, cache)["differing_beyond_tolerance"] == 0


@pytest.mark.parametrize("data,match", [
    (b"", "empty"),
    (b"TRT-8601-EntropyCalibration2\ndata: 3c01020\n" [:30], "line 2"),
    (b"input: 3c010204\n", "header line is missing"),
    (b"{not json", "does not parse"),
    (b"{}", "non-empty"),
    (b"\x00\x01\x02\x03garbage-bytes-here", "flatbuffers"),
    (b"# a readme\nsome words here\n", "line 1"),
    (b"a 1.0\na 2.0\n", "twice"),
])
def test_bad_files_get_a_clear_error(data, match):
    with pytest.raises(CacheFormatError, match=match):
        parse_ranges(data, "f")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_parse_or_raise_a_format_error(data):
    try:
        ranges = parse_ranges(data, "fuzz")
    except CacheFormatError:
        return
    assert isinstance(ranges.amax, dict)


names = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=40)
scales = st.floats(min_value=2.0**-100, max_value=2.0**100, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(names.filter(lambda n: n.strip() == n and not n.startswith("TRT-")), scales,
                       min_size=1, max_size=20))
def test_fuzz_trt_cache_write_read_keeps_every_scale(tmp_path_factory, table):
    path = tmp_path_factory.mktemp("fuzz") / "c.cache"
    amax = {name: float(np.float32(s)) * 127 for name, s in table.items()}
    ranges = read_ranges(write_ranges(path, "trt", amax))
    assert {k: scale_to_hex(v / 127) for k, v in ranges.amax.items()} == \
           {k: scale_to_hex(v / 127) for k, v in amax.items()}
    assert all(hex_to_scale(scale_to_hex(v / 127)) == np.float32(v / 127) for v in amax.values())


def test_cli_cache_commands_print_json(shared_caches, tmp_path):
    cache = shared_caches / "T-K-233__Diffusion-Benchmark__int8.cache"
    info = json.loads(run_cli("cache", "inspect", str(cache), "--json", check=True).stdout)
    assert info["amax"]["zero"] == 80 and info["amax"]["infinite"] == 7
    lint = run_cli("cache", "lint", str(cache), "--json")
    assert lint.returncode == 2 and json.loads(lint.stdout)["status"] == "errors"
    flat = shared_caches / "shiyongming__onnxrt_trt_ep__calibration.flatbuffers"
    out = run_cli("cache", "convert", str(flat), "--to", "trt", "--trt-version", "10.3.0", "-o", "m.cache",
                  cwd=tmp_path, check=True)
    assert "TRT-100300-EntropyCalibration2" in out.stdout
    diff = json.loads(run_cli("cache", "diff", str(flat), "m.cache", "--json", cwd=tmp_path, check=True).stdout)
    assert diff["common"] == 175 and diff["differing_beyond_tolerance"] == 0


def test_cli_cache_error_is_one_line(tmp_path):
    (tmp_path / "junk.cache").write_bytes(b"TRT-8601-EntropyCalibration2\nbroken line\n")
    proc = run_cli("cache", "inspect", "junk.cache", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "line 2" in proc.stderr
