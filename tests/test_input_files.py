"""Stamps of the local files a run's config names (``clipcore.input_files``): which values count
as files, and which changes make a finished run stale."""
from __future__ import annotations

import json
import logging
import os

from clipcore.input_files import STAMPS_FILE, changed_input_files, named_files, record_input_files


def make_inputs(tmp_path):
    weights = tmp_path / "student.safetensors"
    weights.write_bytes(b"w" * 10)
    arch = tmp_path / "tiny.json"
    arch.write_text("{}")
    bundle = tmp_path / "bundle"
    (bundle / "nested").mkdir(parents=True)
    (bundle / "open_clip_config.json").write_text("{}")
    (bundle / "open_clip_model.safetensors").write_bytes(b"b" * 10)
    (bundle / "nested" / "ignored.txt").write_text("not a bundle file")
    labels = tmp_path / "labellers.txt"
    labels.write_text("x")
    checkpoint = tmp_path / "last.ckpt"
    checkpoint.write_bytes(b"c")
    plain = {
        "student": {"name": "tiny", "pretrained": str(weights), "config": str(arch)},
        "teacher": {"name": f"local-dir:{bundle}", "pretrained": None},
        "data": {"root": str(tmp_path), "template": "a photo of a {}."},
        "objective": {"labellers": ["student", {"name": "tiny", "pretrained": str(labels)}]},
        "resume": str(checkpoint),  # never compared, so never stamped: it changes as the run trains
    }
    return plain, weights, arch, bundle, labels


def test_the_files_a_config_names_are_files_bundle_files_and_those_in_lists_but_not_folders(tmp_path):
    plain, weights, arch, bundle, labels = make_inputs(tmp_path)
    assert named_files(plain) == sorted([weights, arch, bundle / "open_clip_config.json",
                                         bundle / "open_clip_model.safetensors", labels])


def later(path, seconds=1):
    """Move ``path``'s modification time on, as a rewrite a second later would."""
    status = os.stat(path)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + seconds * 10**9))


def test_a_replaced_file_makes_the_run_stale_a_rewritten_or_missing_one_does_not(tmp_path, caplog):
    plain, weights, arch, bundle, labels = make_inputs(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    assert changed_input_files(run) == []  # a run from before the records: nothing to compare
    record_input_files(run, plain)
    assert (run / STAMPS_FILE).is_file()
    assert changed_input_files(run) == []

    labels.write_text("x")  # rewritten with the same bytes, a later modification time
    later(labels)
    bundle_weights = bundle / "open_clip_model.safetensors"
    bundle_weights.write_bytes(b"other weights")  # another size
    weights.write_bytes(b"v" * 10)  # the same size, other bytes
    later(weights)
    assert changed_input_files(run) == sorted([str(weights.resolve()), str(bundle_weights.resolve())])

    record_input_files(run, plain)
    arch.unlink()
    with caplog.at_level(logging.WARNING, logger="clipcore.input_files"):
        assert changed_input_files(run) == []
    assert str(arch.resolve()) in caplog.text and "gone" in caplog.text


def test_a_resumed_attempt_reads_again_only_the_files_that_changed_on_disk(tmp_path):
    plain, weights, arch, _, _ = make_inputs(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    record_input_files(run, plain)
    first = json.loads((run / STAMPS_FILE).read_text())
    # Other bytes behind the same size and modification time: the digest is not recomputed.
    status = os.stat(weights)
    weights.write_bytes(b"u" * 10)
    os.utime(weights, ns=(status.st_atime_ns, status.st_mtime_ns))
    arch.write_text("{ }")  # another size: read again
    record_input_files(run, plain)
    second = json.loads((run / STAMPS_FILE).read_text())
    assert second[str(weights.resolve())] == first[str(weights.resolve())]
    assert second[str(arch.resolve())]["sha256"] != first[str(arch.resolve())]["sha256"]
