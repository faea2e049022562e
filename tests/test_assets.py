"""Asset registry (lookup, sha256 verification, download) and readers, on the real files."""
import io
import pickle
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from clipcore import assets
from clipcore.assets import (
    AssetError,
    asset_path,
    dedupe_case_insensitive,
    load_ssb_split,
    merge_concepts,
    read_class_list_txt,
    read_dictionary_csv,
)

IMAGENET = "spectralgcd/imagenet_classes.txt"


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    """An empty cache root: tests never touch ~/.cache."""
    home = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    # The session's CLIPCORE_CACHE_DIR would take precedence (clipcore.paths).
    monkeypatch.delenv("CLIPCORE_CACHE_DIR", raising=False)
    monkeypatch.delenv(assets.ASSETS_DIR_ENV, raising=False)
    return home


@pytest.fixture
def local_assets(shared_assets, cache_home, monkeypatch):
    monkeypatch.setenv(assets.ASSETS_DIR_ENV, str(shared_assets))
    return shared_assets


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_registry_urls_point_at_pinned_upstream_commit():
    for name, asset in assets.ASSETS.items():
        upstream = "https://raw.githubusercontent.com/miccunifi/SpectralGCD/fff0780/"
        assert asset.url.startswith(upstream)
        assert asset.url.endswith(Path(name).name)
        assert len(asset.sha256) == 64
    with pytest.raises(AssetError, match="known assets"):
        asset_path("spectralgcd/nope.csv")


def test_local_copy_is_verified_and_returned(local_assets, cache_home):
    for name in assets.ASSETS:
        path = asset_path(name)
        assert path == local_assets / name
    assert _files_under(cache_home) == []  # a local copy is used in place, not copied


def test_openimages_dictionary(local_assets):
    names = read_dictionary_csv(asset_path("spectralgcd/openimages_dictionary.csv"))
    assert len(names) == 20930
    assert len(set(names)) == 20930
    assert dedupe_case_insensitive(names) == names
    assert sum("," in n for n in names) == 13  # quoted fields parsed as one value
    assert max(map(len, names)) == 64


def test_tags_dictionary_keeps_whitespace_and_has_no_case_duplicates(local_assets):
    names = read_dictionary_csv(asset_path("spectralgcd/textgcd_tags_dictionary.csv"))
    assert len(names) == 22131
    assert len(dedupe_case_insensitive(names)) == 22131
    assert sum(n != n.strip() for n in names) == 67
    assert "Skittles " in names
    assert sum("," in n for n in names) == 51
    assert all(type(n) is str for n in names)


def test_imagenet_class_list(local_assets):
    path = asset_path(IMAGENET)
    assert path.read_bytes().count(b"\n") == 999  # last line has no newline
    names = read_class_list_txt(path)
    assert len(names) == 1000
    assert names[-1] == "toilet tissue"


def test_dictionary_reader_and_merge_on_hand_made_file(tmp_path):
    csv_path = tmp_path / "dict.csv"
    csv_path.write_text('ClassName\nDog\n"cat, domestic"\n Skittles \ndog\nsea lion\n',
                        encoding="utf-8")
    names = read_dictionary_csv(csv_path)
    assert names == ["Dog", "cat, domestic", " Skittles ", "dog", "sea lion"]
    assert dedupe_case_insensitive(names) == ["Dog", "cat, domestic", " Skittles ", "sea lion"]
    extras = ["DOG", "Sea_Lion", "black_footed_albatross", "new_one", "New One"]
    merged = merge_concepts(names, extras)
    assert merged == ["Dog", "cat, domestic", " Skittles ", "sea lion",
                      "black footed albatross", "new one"]

    bad = tmp_path / "bad.csv"
    bad.write_text("Name\nx\n", encoding="utf-8")
    with pytest.raises(AssetError, match="ClassName"):
        read_dictionary_csv(bad)


@pytest.mark.parametrize(
    "dataset, known, hard, medium, easy, first_known",
    [
        ("cub", 100, 34, 34, 32, [150, 70, 34, 178]),
        ("scars", 98, 7, 15, 76, [1, 11, 25]),
        ("aircraft", 50, 13, 17, 20, [0, 1, 2]),
    ],
)
def test_ssb_splits(local_assets, dataset, known, hard, medium, easy, first_known):
    split = load_ssb_split(asset_path(f"ssb_splits/{dataset}_osr_splits.pkl"))
    known_ids = split["known_classes"]
    unknown = split["unknown_classes"]
    assert len(known_ids) == known
    assert known_ids[: len(first_known)] == first_known  # pickle order, not sorted
    sizes = {k: len(v) for k, v in unknown.items()}
    assert sizes == {"Hard": hard, "Medium": medium, "Easy": easy}
    every = known_ids + unknown["Hard"] + unknown["Medium"] + unknown["Easy"]
    assert len(set(every)) == len(every)  # known and unknown classes are disjoint
    assert all(type(i) is int for i in every)


class _Exploit:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_globals(tmp_path):
    evil = tmp_path / "evil_osr_splits.pkl"
    evil.write_bytes(pickle.dumps({"known_classes": [1], "unknown_classes": _Exploit()}))
    with pytest.raises(AssetError, match=r"refusing to load global .*system"):
        load_ssb_split(evil)

    benign_global = tmp_path / "set_osr_splits.pkl"  # even harmless globals are refused
    benign_global.write_bytes(pickle.dumps({"known_classes": {1, 2}, "unknown_classes": {}},
                                           protocol=2))
    with pytest.raises(AssetError, match="refusing"):
        load_ssb_split(benign_global)

    missing_level = tmp_path / "partial_osr_splits.pkl"
    partial = {"known_classes": [1], "unknown_classes": {"Hard": [2]}}
    missing_level.write_bytes(pickle.dumps(partial))
    with pytest.raises(AssetError, match="Medium"):
        load_ssb_split(missing_level)


def test_tampered_local_copy_is_rejected_and_nothing_cached(shared_assets, cache_home, tmp_path,
                                                            monkeypatch):
    local = tmp_path / "local"
    target = local / IMAGENET
    target.parent.mkdir(parents=True)
    shutil.copyfile(shared_assets / IMAGENET, target)
    with open(target, "ab") as fh:
        fh.write(b"\nextra class")
    monkeypatch.setenv(assets.ASSETS_DIR_ENV, str(local))
    expected = assets.ASSETS[IMAGENET].sha256
    actual = assets.sha256_of(target)
    with pytest.raises(AssetError) as info:
        asset_path(IMAGENET)
    message = str(info.value)
    assert str(target) in message and expected in message and actual in message
    assert _files_under(cache_home) == []
    assert target.read_bytes().endswith(b"extra class")  # the user's file is not touched


class _FakeResponse(io.BytesIO):
    def __init__(self, payload: bytes, fail_after: int | None = None):
        super().__init__(payload)
        self._fail_after = fail_after

    def read(self, size=-1):
        if self._fail_after is not None and self.tell() >= self._fail_after:
            raise ConnectionResetError("connection reset by peer")
        return super().read(size if self._fail_after is None else min(size, self._fail_after))


def _fake_urlopen(monkeypatch, payload, fail_after=None):
    calls = []

    def urlopen(url, timeout=None):
        calls.append((url, timeout))
        return _FakeResponse(payload, fail_after)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return calls


def test_download_verifies_and_caches(shared_assets, cache_home, monkeypatch):
    calls = _fake_urlopen(monkeypatch, (shared_assets / IMAGENET).read_bytes())
    path = asset_path(IMAGENET)
    assert path == cache_home / "clipcore" / "assets" / IMAGENET
    assert calls == [(assets.ASSETS[IMAGENET].url, 30)]
    assert len(read_class_list_txt(path)) == 1000
    assert asset_path(IMAGENET) == path and len(calls) == 1  # second call hits the cache
    assert _files_under(cache_home) == [path]  # no temp file left


def test_download_with_wrong_hash_leaves_nothing(shared_assets, cache_home, monkeypatch):
    _fake_urlopen(monkeypatch, b"<html>rate limited</html>")
    with pytest.raises(AssetError, match="sha256 mismatch") as info:
        asset_path(IMAGENET)
    assert assets.ASSETS[IMAGENET].sha256 in str(info.value)
    assert _files_under(cache_home) == []


def test_interrupted_download_leaves_nothing(shared_assets, cache_home, monkeypatch):
    _fake_urlopen(monkeypatch, (shared_assets / IMAGENET).read_bytes(), fail_after=1000)
    with pytest.raises(AssetError, match="could not download"):
        asset_path(IMAGENET)
    assert _files_under(cache_home) == []


def test_offline_download_fails_fast_with_instructions(cache_home, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError(OSError("network access is disabled in tests"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(AssetError) as info:
        asset_path("spectralgcd/openimages_dictionary.csv")
    message = str(info.value)
    assert assets.ASSETS["spectralgcd/openimages_dictionary.csv"].url in message
    assert assets.ASSETS_DIR_ENV in message
    assert str(cache_home / "clipcore" / "assets" / "spectralgcd") in message
    assert _files_under(cache_home) == []


def test_no_download_mode_and_cli(local_assets, cache_home, monkeypatch, caplog):
    monkeypatch.delenv(assets.ASSETS_DIR_ENV)
    with pytest.raises(AssetError, match="fetch"):
        asset_path(IMAGENET, download=False)
    monkeypatch.setenv(assets.ASSETS_DIR_ENV, str(local_assets))
    with caplog.at_level("INFO", logger="clipcore.assets"):
        assert assets.main(["fetch", IMAGENET, "ssb_splits/cub_osr_splits.pkl"]) == 0
        assert assets.main(["list"]) == 0
        assert assets.main(["fetch", "no/such.file"]) == 1
    text = caplog.text
    assert f"{IMAGENET}: ok" in text and "known assets" in text
