from __future__ import annotations

import json
import os
import stat
import sys

import pytest

from pyro_dirichlet.io.atomic import atomic_path, atomic_write, atomic_write_json, atomic_write_text


class Boom(Exception):
    pass


def test_success_writes_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "weights.bin"
    with atomic_write(target) as handle:
        handle.write(b"\x00\x01payload")
    assert target.read_bytes() == b"\x00\x01payload"
    assert os.listdir(tmp_path) == ["weights.bin"]


def test_target_changes_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "spec.json"
    target.write_text("old")
    with atomic_write(target, "w") as handle:
        handle.write("new")
        handle.flush()
        # Readers still see the complete old file while the new one is being written.
        assert target.read_text() == "old"
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["spec.json"]


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_error_inside_the_block_leaves_no_target_and_no_temporary(tmp_path, error):
    target = tmp_path / "weights.bin"
    with pytest.raises(error):
        with atomic_write(target) as handle:
            handle.write(b"half of it")
            raise error()
    assert os.listdir(tmp_path) == []


def test_error_inside_the_block_keeps_the_old_file(tmp_path):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"complete")
    with pytest.raises(Boom):
        with atomic_write(target) as handle:
            handle.write(b"partial")
            raise Boom()
    assert target.read_bytes() == b"complete"
    assert os.listdir(tmp_path) == ["weights.bin"]


def test_missing_directory_raises_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_write(tmp_path / "missing" / "file.bin") as handle:
            handle.write(b"x")
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_new_file_gets_the_permissions_open_would_give(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "notes.txt", "hi")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "notes.txt").st_mode) == 0o644


def test_text_is_written_as_utf8(tmp_path):
    atomic_write_text(tmp_path / "notes.txt", "Dirichlet α ≥ 0\n")
    assert (tmp_path / "notes.txt").read_bytes() == "Dirichlet α ≥ 0\n".encode("utf-8")


def test_json_has_indent_two_and_keeps_key_order(tmp_path):
    obj = {"format": "x", "b": [1, 2], "a": {"z": None, "y": 1.5}}
    atomic_write_json(tmp_path / "spec.json", obj)
    text = (tmp_path / "spec.json").read_text()
    assert text == json.dumps(obj, indent=2) + "\n"
    assert list(json.loads(text)) == ["format", "b", "a"]


def test_unserialisable_json_raises_before_touching_the_disk(tmp_path):
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "spec.json", {"bad": object()})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "mode, encoding, message",
    [("rb", None, r"mode must be a writing mode"), ("a", None, r"mode must be a writing mode"), ("wb", "utf-8", r"encoding must be None for binary mode")],
)
def test_bad_arguments_raise(tmp_path, mode, encoding, message):
    with pytest.raises(ValueError, match=message):
        with atomic_write(tmp_path / "f", mode, encoding=encoding):
            pass
    assert os.listdir(tmp_path) == []


def test_text_must_be_a_string(tmp_path):
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        atomic_write_text(tmp_path / "f", b"bytes")


def test_atomic_path_keeps_the_suffix_and_replaces_only_on_success(tmp_path):
    target = tmp_path / "posterior.nc"
    target.write_text("old")
    with pytest.raises(Boom):
        with atomic_path(target) as temporary:
            assert temporary.suffix == ".nc" and temporary.parent == tmp_path
            temporary.write_text("half")
            raise Boom
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["posterior.nc"]
    with atomic_path(target) as temporary:
        temporary.write_text("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["posterior.nc"]
