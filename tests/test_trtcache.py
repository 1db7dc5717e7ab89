"""TensorRT calibration cache: real files round-trip byte for byte; bad files name the line."""

from __future__ import annotations

import numpy as np
import pytest

from quantlab.errors import CacheFormatError, QuantlabError
from quantlab.formats.trtcache import (
    encode_version,
    hex_to_scale,
    make_header,
    parse_trt_cache,
    parse_version,
    read_trt_cache,
    scale_to_hex,
    write_trt_cache,
)

TRT_FILES = {
    "KelvinCPChiu__FasterRCNN_etlt__cal.bin": ("TRT-7000-EntropyCalibration2", (7, 0, 0), 117),
    "liujuanLT__model_convert__calibration.cache": ("TRT-7201-EntropyCalibration2", (7, 2, 1), 45),
    "NicolaSansoni__DeepStream-Yolo__calib.table": ("TRT-8001-EntropyCalibration2", (8, 0, 1), 521),
    "nt4sth__Torch-TensorRT-VGG16__calibration.cache": ("TRT-8400-MinMaxCalibration", (8, 4, 0), 67),
    "T-K-233__Diffusion-Benchmark__int8.cache": ("TRT-8601-EntropyCalibration2", (8, 6, 1), 848),
}


@pytest.mark.parametrize("name", sorted(TRT_FILES))
def test_real_cache_parses_with_its_header_version_and_entry_count(shared_caches, name):
    header, version, entries = TRT_FILES[name]
    cache = read_trt_cache(shared_caches / name)
    assert (cache.header, cache.version, len(cache.scales)) == (header, version, entries)


@pytest.mark.parametrize("name", sorted(TRT_FILES))
def test_real_cache_round_trips_byte_for_byte(shared_caches, name):
    raw = (shared_caches / name).read_bytes()
    assert read_trt_cache(shared_caches / name).to_text().encode() == raw


def test_names_with_colons_spaces_and_parentheses_split_on_the_last_separator(shared_caches):
    cache = read_trt_cache(shared_caches / "NicolaSansoni__DeepStream-Yolo__calib.table")
    assert "(Unnamed Layer* 0) [Convolution]_output" in cache.scales


def test_diffusion_cache_holds_its_80_zero_and_7_infinite_scales(shared_caches):
    scales = np.array(list(read_trt_cache(shared_caches / "T-K-233__Diffusion-Benchmark__int8.cache").scales.values()))
    assert (scales == 0).sum() == 80 and np.isposinf(scales).sum() == 7


def test_hex_is_the_float32_bit_pattern_of_the_scale():
    assert scale_to_hex(1.0 / 127) == "3c010204"
    assert hex_to_scale("3c010204") * 127 == pytest.approx(1.0, rel=1e-7)
    assert scale_to_hex(0.0) == "0"


@pytest.mark.parametrize("text,version", [("8.6.1", (8, 6, 1)), ("10.3.0", (10, 3, 0)), ("100300", (10, 3, 0)),
                                          ("8601", (8, 6, 1)), ("7", (7, 0, 0))])
def test_versions_parse_from_dotted_or_header_form(text, version):
    assert parse_version(text) == version


def test_header_version_has_four_digits_through_9_and_six_from_10():
    assert make_header((8, 6, 1), "EntropyCalibration2") == "TRT-8601-EntropyCalibration2"
    assert make_header((10, 3, 0), "MinMaxCalibration") == "TRT-100300-MinMaxCalibration"
    assert encode_version(9, 3, 0) == 9300


def test_tensorrt4_bare_header_is_accepted():
    cache = parse_trt_cache("1\ndata: 3c010204\n")
    assert cache.header == "1" and cache.version is None


def test_windows_line_endings_round_trip():
    text = "TRT-8601-EntropyCalibration2\r\na: 3c010204\r\nb c: 3f800000\r\n"
    assert parse_trt_cache(text).to_text() == text


@pytest.mark.parametrize("text,match", [
    ("", "empty"),
    ("hello\na: 1\n", "line 1"),
    ("TRT-8601-EntropyCalibration2\nno separator here\n", "line 2"),
    ("TRT-8601-EntropyCalibration2\na: 3c0102041\n", "line 2.*hex"),
    ("TRT-8601-EntropyCalibration2\na: zz\n", "line 2"),
    ("TRT-8601-EntropyCalibration2\na: 1\nb: 2\na: 3\n", "line 4.*twice"),
])
def test_bad_cache_text_names_the_line(text, match):
    with pytest.raises(CacheFormatError, match=match):
        parse_trt_cache(text)


def test_writer_refuses_zero_and_infinite_scales_and_leaves_no_file(tmp_path):
    target = tmp_path / "model.cache"
    for bad in (0.0, float("inf"), float("nan"), -1.0):
        with pytest.raises(CacheFormatError, match="refusing"):
            write_trt_cache(target, {"a": 1.0, "b": bad}, "TRT-8601-EntropyCalibration2")
        assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_written_cache_reads_back_to_the_same_float32_scales(tmp_path):
    amax = {"input": 1.0, "conv/out:0": 6.25, "x (1)": 0.0123}
    path = write_trt_cache(tmp_path / "m.cache", amax, "TRT-100300-EntropyCalibration2")
    cache = read_trt_cache(path)
    assert cache.header == "TRT-100300-EntropyCalibration2"
    assert {k: np.float32(v) for k, v in cache.scales.items()} == {k: np.float32(v / 127) for k, v in amax.items()}


def test_tensorrt4_version_writes_the_bare_1_header():
    assert make_header((4, 0, 1), "EntropyCalibration") == "1"
    assert make_header("4") == "1"


@pytest.mark.parametrize("algorithm", ["a b", "Entropy\nCalibration2", "a:b", "", "Entropy-2", "2fast"])
def test_header_refuses_an_algorithm_name_tensorrt_could_not_match(algorithm):
    with pytest.raises(QuantlabError, match="`trt_algorithm`") as caught:
        make_header((8, 6, 1), algorithm)
    assert caught.value.params == ("trt_algorithm",)


@pytest.mark.parametrize("text", ["8.60", "abc", "12345", "3.0", "8.6.1.2.3", "", "0.1", "100", "8601x"])
def test_bad_version_text_is_refused_naming_trt_version(text):
    with pytest.raises(QuantlabError, match="`trt_version`") as caught:
        parse_version(text)
    assert caught.value.params == ("trt_version",)


def test_header_from_a_bad_version_tuple_is_a_quantlab_error():
    with pytest.raises(QuantlabError, match="`trt_version` '8.60.1'"):
        make_header((8, 60, 1), "EntropyCalibration2")


def test_header_accepts_a_version_as_text():
    assert make_header("10.3.0", "MinMaxCalibration") == "TRT-100300-MinMaxCalibration"


@pytest.mark.parametrize("header", ["TRT-860-EntropyCalibration2", "TRT-08601-EntropyCalibration2"])
def test_header_version_number_must_have_four_or_six_digits(header):
    with pytest.raises(CacheFormatError, match="line 1.*version number"):
        parse_trt_cache(f"{header}\na: 3c010204\n")


def test_bad_body_line_is_reported_as_a_tensorrt_cache_with_the_whole_line():
    text = "TRT-8601-EntropyCalibration2\na: 3c010204\nfoo: zz\n"
    with pytest.raises(CacheFormatError, match=r"TensorRT calibration cache .*line 3: 'foo: zz' is not "
                                               r"'<tensor name>: <hex scale>'"):
        parse_trt_cache(text)


def test_duplicate_tensor_names_the_line_of_its_first_entry():
    with pytest.raises(CacheFormatError, match="line 4: tensor 'a' appears twice \\(first on line 2\\)"):
        parse_trt_cache("TRT-8601-EntropyCalibration2\na: 1\nb: 2\na: 3\n")


def test_nul_byte_in_a_tensor_name_is_a_bad_line():
    with pytest.raises(CacheFormatError, match="line 2.*NUL"):
        parse_trt_cache("TRT-8601-EntropyCalibration2\na\x00b: 3c010204\n")


def test_non_utf8_bytes_in_a_cache_file_name_their_line(tmp_path):
    path = tmp_path / "m.cache"
    path.write_bytes(b"TRT-8601-EntropyCalibration2\na: 3c010204\nb\xff: 3c010204\n")
    with pytest.raises(CacheFormatError, match="TensorRT calibration cache .*line 3.*not UTF-8"):
        read_trt_cache(path)


def test_writer_refuses_a_scale_that_is_subnormal_in_float32(tmp_path):
    with pytest.raises(CacheFormatError, match="refusing.*subnormal"):
        write_trt_cache(tmp_path / "m.cache", {"a": 1.0, "b": 1.8e-43}, "TRT-8601-EntropyCalibration2")
    assert not (tmp_path / "m.cache").exists()


def test_header_errors_are_written_with_the_flags_the_cli_renders():
    spelling = {"trt_version": "--trt-version", "trt_algorithm": "--trt-algorithm"}
    with pytest.raises(QuantlabError) as version:
        parse_version("8.60")
    with pytest.raises(QuantlabError) as algorithm:
        make_header((8, 6, 1), "a b")
    assert version.value.render(spelling).startswith("--trt-version '8.60' is not a TensorRT version")
    assert algorithm.value.render(spelling).startswith("--trt-algorithm 'a b' cannot go in a cache header")
