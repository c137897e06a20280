"""Readers and URL expansion: documents out of each format, and bad input named by file:line."""

import bz2
import gzip
import lzma

import pytest

from lmlib.data import sources
from lmlib.data.pretrain import PretrainData
from lmlib.errors import ConfigError


def read(path, **options):
    skipped = sources.SkipCounter()
    return list(sources.read_documents(str(path), "train", skipped,
                                       sources.ReadOptions(**options))), skipped


def test_urls_split_outside_braces_and_mixtures_need_weights_everywhere():
    assert sources.split_top_level("a.{0..3}.jsonl, b.{x,y}.txt") == ["a.{0..3}.jsonl",
                                                                      "b.{x,y}.txt"]
    assert sources.parse_mixture("gs://a/*.jsonl:0.7,b.{1,2}.parquet:.3") == [
        (["gs://a/*.jsonl"], 0.7), (["b.{1,2}.parquet"], 0.3)]
    assert sources.parse_mixture("a,b") == [(["a", "b"], 1.0)]
    with pytest.raises(ConfigError, match="give 'b' a weight"):
        sources.parse_mixture("a:0.5,b")


def test_braces_and_globs_expand_and_a_url_matching_nothing_is_named(tmp_path):
    for i in range(3):
        (tmp_path / f"part.{i:03d}.txt").write_text(f"doc {i}")
    assert sources.expand_url(str(tmp_path / "part.{000..001}.txt")) == [
        str(tmp_path / "part.000.txt"), str(tmp_path / "part.001.txt")]
    assert len(sources.expand_url(str(tmp_path / "part.*.txt"))) == 3
    missing = str(tmp_path / "nothing.{0..2}.jsonl")
    with pytest.raises(ConfigError, match=f"no file matches '{tmp_path}/nothing.0.jsonl'"):
        sources.expand_url(missing)
    # A member that matches nothing is named even when its siblings exist: a typo in a range
    # must not silently drop a shard.
    with pytest.raises(ConfigError, match=r"no file matches .*part\.003\.txt'"):
        sources.expand_url(str(tmp_path / "part.{000..003}.txt"))


def test_plain_text_one_document_per_file_or_per_blank_line_block(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one\nstill one\n\n\ntwo\n  \nthree")
    assert read(path)[0] == ["one\nstill one\n\n\ntwo\n  \nthree"]
    assert read(path, text_split="blank_line")[0] == ["one\nstill one", "two", "three"]


@pytest.mark.parametrize("suffix, compress", [(".gz", gzip.compress), (".bz2", bz2.compress),
                                              (".xz", lzma.compress)])
def test_jsonl_text_key_and_compression_by_extension(tmp_path, suffix, compress):
    path = tmp_path / f"a.jsonl{suffix}"
    path.write_bytes(compress(b'{"body": "x"}\n\n{"body": "y", "id": 2}\n'))
    assert read(path, text_key="body")[0] == ["x", "y"]


BAD_LINES = {
    "malformed": (b'{"text": "fine"}\n{"text": \n', "a.jsonl:2: not valid JSON"),
    "no key": (b'{"text": "fine"}\n{"txt": "x"}\n', "a.jsonl:2: no 'text' key"),
    "not a string": (b'{"text": 3}\n', "a.jsonl:1: 'text' is int, not a string"),
    "undecodable": (b'{"text": "a"}\n{"text": "a"}\n{"text": "\xff"}\n',
                    "a.jsonl:3: not UTF-8"),
}


@pytest.mark.parametrize("case", BAD_LINES)
def test_a_bad_jsonl_line_stops_with_file_line_reason_or_is_counted(tmp_path, case):
    data, message = BAD_LINES[case]
    path = tmp_path / "a.jsonl"
    path.write_bytes(data)
    with pytest.raises(sources.DataError, match=f"^{tmp_path}/{message}"):
        read(path)
    documents, skipped = read(path, on_error="skip")
    assert len(documents) == data.count(b"\n") - 1
    assert skipped.counts == {str(path): 1}
    assert path.read_bytes() == data  # input is never modified


def test_undecodable_plain_text_names_its_line(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"ok\nok\nbad \xc3\x28\n")
    with pytest.raises(sources.DataError, match=r"a.txt:3: not UTF-8"):
        read(path)


def test_config_values_are_checked():
    with pytest.raises(ConfigError, match="data.on_error='ignore'"):
        PretrainData(source="urls", train_urls="a.jsonl", on_error="ignore").validate()
    with pytest.raises(ConfigError, match="data.source=urls"):
        PretrainData(train_urls="a.jsonl").validate()
    with pytest.raises(ConfigError, match="needs data.train_urls"):
        PretrainData(source="urls").validate()
