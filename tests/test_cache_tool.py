"""Cache toolchain: every real file is read, inspected, linted; conversions keep every scale."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantlab import defaults
from quantlab.cachetool import TINY_AMAX, diff_ranges, inspect_ranges, lint_ranges
from quantlab.errors import CacheFormatError, QuantlabError
from quantlab.formats.ranges import header_for_conversion, parse_ranges, read_ranges, write_ranges
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


# Real TensorRT caches without zero/infinite scales (those quantlab refuses to write).
WRITABLE_TRT = [n for n in TRT_SET if "Diffusion" not in n]


def as_tensorrt4(raw: bytes) -> bytes:
    """A real cache with its header replaced by TensorRT 4's bare '1'."""
    return b"1" + raw[raw.index(b"\n"):]


@pytest.mark.parametrize("name", WRITABLE_TRT)
def test_tensorrt_cache_converted_to_trt_is_the_same_bytes(shared_caches, tmp_path, name):
    source = read_ranges(shared_caches / name)
    out = write_ranges(tmp_path / "out.cache", "trt", source.amax, trt_header=header_for_conversion(source),
                       like=source)
    assert out.read_bytes() == (shared_caches / name).read_bytes()


def test_tensorrt4_cache_converted_to_trt_keeps_its_bare_1_header(shared_caches, tmp_path):
    raw = as_tensorrt4((shared_caches / "liujuanLT__model_convert__calibration.cache").read_bytes())
    (tmp_path / "old.cache").write_bytes(raw)
    source = read_ranges(tmp_path / "old.cache")
    out = write_ranges(tmp_path / "out.cache", "trt", source.amax, trt_header=header_for_conversion(source),
                       like=source)
    assert out.read_bytes() == raw


def test_windows_line_endings_survive_a_conversion_to_trt(tmp_path):
    source = parse_ranges(b"TRT-8601-EntropyCalibration2\r\na: 3c010204\r\nb c: 3f800000\r\n", "win.cache")
    out = write_ranges(tmp_path / "out.cache", "trt", source.amax, trt_header=header_for_conversion(source),
                       like=source)
    assert out.read_bytes() == b"TRT-8601-EntropyCalibration2\r\na: 3c010204\r\nb c: 3f800000\r\n"


def test_conversion_header_keeps_the_part_the_user_did_not_give(shared_caches):
    source = read_ranges(shared_caches / "nt4sth__Torch-TensorRT-VGG16__calibration.cache")  # TRT-8400-MinMax
    assert header_for_conversion(source, trt_version="10.3.0") == "TRT-100300-MinMaxCalibration"
    assert header_for_conversion(source, trt_algorithm="EntropyCalibration2") == "TRT-8400-EntropyCalibration2"
    assert header_for_conversion(source, "8.6.1", "LegacyCalibration") == "TRT-8601-LegacyCalibration"


def test_conversion_header_for_tensorrt_4_is_the_bare_1(shared_caches):
    source = read_ranges(shared_caches / "nt4sth__Torch-TensorRT-VGG16__calibration.cache")
    assert header_for_conversion(source, trt_version="4.0.1") == "1"


def test_conversion_header_of_a_table_without_one_is_the_default(shared_caches):
    source = read_ranges(shared_caches / "shiyongming__onnxrt_trt_ep__calibration.flatbuffers")
    assert header_for_conversion(source) == "TRT-8601-EntropyCalibration2"
    assert header_for_conversion(source, trt_version="10.3.0") == "TRT-100300-EntropyCalibration2"


def test_conversion_header_of_a_quantlab_table_is_the_one_its_cache_was_written_with(tmp_path):
    from quantlab.table import CalibrationTable

    path = CalibrationTable("max", {}, {"x": 1.0}, provenance={"trt_cache_header": "TRT-100300-MinMaxCalibration"}
                            ).save(tmp_path / "m.quantlab.json")
    assert header_for_conversion(read_ranges(path)) == "TRT-100300-MinMaxCalibration"


def test_conversion_of_a_tensorrt4_cache_to_an_algorithm_asks_for_a_version(shared_caches, tmp_path):
    (tmp_path / "old.cache").write_bytes(as_tensorrt4((shared_caches / "KelvinCPChiu__FasterRCNN_etlt__cal.bin")
                                                      .read_bytes()))
    source = read_ranges(tmp_path / "old.cache")
    with pytest.raises(QuantlabError, match="TensorRT 4 header.*`trt_version`") as caught:
        header_for_conversion(source, trt_algorithm="MinMaxCalibration")
    assert "trt_version" in caught.value.params
    assert header_for_conversion(source, "8.6", "MinMaxCalibration") == "TRT-8600-MinMaxCalibration"


def test_conversion_header_refuses_a_bad_algorithm_naming_trt_algorithm(shared_caches):
    source = read_ranges(shared_caches / "KelvinCPChiu__FasterRCNN_etlt__cal.bin")
    with pytest.raises(QuantlabError, match="`trt_algorithm` 'a b'"):
        header_for_conversion(source, trt_algorithm="a b")


def test_inspect_says_a_tensorrt4_header_records_no_algorithm(shared_caches):
    raw = as_tensorrt4((shared_caches / "KelvinCPChiu__FasterRCNN_etlt__cal.bin").read_bytes())
    info = inspect_ranges(parse_ranges(raw, "old.cache"))
    assert info["algorithm"] is None and info["tensorrt_version"] == "4.x"
    assert info["header_description"] == "TensorRT 4, no algorithm recorded"


def test_inspect_describes_a_modern_header_by_version_and_algorithm(shared_caches):
    info = inspect_ranges(read_ranges(shared_caches / "nt4sth__Torch-TensorRT-VGG16__calibration.cache"))
    assert info["header_description"] == "TensorRT 8.4.0, MinMaxCalibration"


def edited_cache(shared_caches, hex_scale: str) -> tuple:
    """The clean real FasterRCNN cache with its second entry's scale replaced by ``hex_scale``."""
    lines = (shared_caches / "KelvinCPChiu__FasterRCNN_etlt__cal.bin").read_text().split("\n")
    name = lines[2].rpartition(": ")[0]
    lines[2] = f"{name}: {hex_scale}"
    return parse_ranges("\n".join(lines).encode(), "edited.cache"), name


def test_lint_calls_a_subnormal_scale_an_error(shared_caches):
    ranges, name = edited_cache(shared_caches, "1")  # scale 1.4e-45, amax 1.8e-43
    report = lint_ranges(ranges)
    found = {f["code"]: f for f in report["findings"]}
    assert found["subnormal-scale"]["level"] == "error" and found["subnormal-scale"]["tensors"] == [name]
    assert "tiny-range" not in found and report["exit_code"] == 2


def test_lint_warns_about_a_range_below_the_float16_floor(shared_caches):
    ranges, name = edited_cache(shared_caches, scale_to_hex(1e-6 / 127))
    report = lint_ranges(ranges)
    assert [(f["code"], f["level"], f["tensors"]) for f in report["findings"]] == [("tiny-range", "warning", [name])]
    assert report["exit_code"] == 1 and TINY_AMAX == pytest.approx(7.57e-6, rel=1e-3)


def test_lint_flags_a_subnormal_scale_in_an_onnxruntime_table_too():
    report = lint_ranges(parse_ranges(b"a 1.0\nb 1e-40\n", "calibration.cache"))
    assert [(f["code"], f["tensors"]) for f in report["findings"]] == [("subnormal-scale", ["b"])]


FORMAT_WORDS = {"trt": r"TensorRT", "ort-cache": r"calibration\.cache", "ort-json": r"calibration\.json",
                "ort-flatbuffers": r"calibration\.flatbuffers table.*(corrupt or truncated|entry \d+)",
                "quantlab": r"quantlab|JSON"}


def corrupt_variants(data: bytes, start: int, seed: int) -> list:
    """Truncations and single-byte substitutions of ``data`` at or after byte ``start``."""
    rng = random.Random(seed)
    cuts = [data[:n] for n in sorted(rng.sample(range(start, len(data)), 60))]
    flips = []
    for _ in range(240):
        copy = bytearray(data)
        copy[rng.randrange(start, len(data))] = rng.randrange(256)
        flips.append(bytes(copy))
    return cuts + flips


def real_file(shared_caches, tmp_path, name: str) -> bytes:
    """A real file of ../shared/caches, or a quantlab table written from the real ONNX Runtime one."""
    if name != "quantlab table":
        return (shared_caches / name).read_bytes()
    amax = read_ranges(shared_caches / "shiyongming__onnxrt_trt_ep__calibration.json").amax
    return write_ranges(tmp_path / "t.quantlab.json", "quantlab", amax).read_bytes()


@pytest.mark.parametrize("name", TRT_SET + sorted(ORT_SET) + ["quantlab table"])
def test_corrupt_real_files_are_reported_as_the_format_they_look_like(shared_caches, tmp_path, name):
    data = real_file(shared_caches, tmp_path, name)
    fmt = parse_ranges(data, name).format
    # Corrupt only what follows the part that identifies the format (TensorRT header, root offset, "{").
    start = {"ort-flatbuffers": 16, "ort-json": 1, "quantlab": 1}.get(fmt) or data.index(b"\n") + 1
    for variant in corrupt_variants(data, start, seed=len(data)):
        try:
            parse_ranges(variant, "f")
        except CacheFormatError as exc:  # anything else (a traceback) fails the test
            assert re.search(FORMAT_WORDS[fmt], str(exc)), (name, str(exc))


def test_text_table_with_a_nul_byte_is_not_read_as_flatbuffers(shared_caches):
    data = bytearray((shared_caches / "shiyongming__onnxrt_trt_ep__calibration.cache").read_bytes())
    data[100] = 0
    with pytest.raises(CacheFormatError, match=r"calibration\.cache\) but line \d+ holds a NUL byte"):
        parse_ranges(bytes(data), "f")


def test_truncated_flatbuffers_table_says_so_without_absurd_offsets(shared_caches):
    data = (shared_caches / "shiyongming__onnxrt_trt_ep__calibration.flatbuffers").read_bytes()
    for cut in (16, 40, 1000, len(data) // 2):
        with pytest.raises(CacheFormatError, match="flatbuffers table.*corrupt or truncated") as caught:
            parse_ranges(data[:cut], "f")
        assert all(int(n) <= len(data) for n in re.findall(r"\d+", str(caught.value))), str(caught.value)


def test_truncated_json_table_says_it_does_not_parse_and_may_be_truncated(shared_caches):
    data = (shared_caches / "shiyongming__onnxrt_trt_ep__calibration.json").read_bytes()
    with pytest.raises(CacheFormatError, match=r"calibration\.json.*does not parse as JSON \(truncated\?\)"):
        parse_ranges(data[: len(data) // 2], "f")


def test_quantlab_table_with_a_broken_entry_names_the_entry(tmp_path):
    table = json.loads(write_ranges(tmp_path / "t.json", "quantlab", {"x": 1.0}).read_text())
    table["activations"]["x"] = {"scale": 1.0}
    with pytest.raises(CacheFormatError, match="quantlab calibration table.*'x' has no numeric 'amax'"):
        parse_ranges(json.dumps(table).encode(), "t.json")
