"""``logger.wandb.mode`` against ``WANDB_MODE`` and the API key: online without a key is refused
with what to do, before anything runs; ``auto`` falls back to offline."""
import pytest

from clipcore.config import ConfigError
from clipcore.wandb_mode import resolve_wandb_mode


@pytest.fixture
def no_key(tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    return tmp_path


def test_auto_is_offline_without_a_key_and_online_with_one(no_key, monkeypatch):
    assert resolve_wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode("auto") == "online" and resolve_wandb_mode("online") == "online"


def test_online_without_a_key_is_refused_naming_the_setting_and_the_ways_out(no_key, monkeypatch):
    with pytest.raises(ConfigError, match=r"logger\.wandb\.mode=online, but no W&B API key.*wandb login.*mode=offline"):
        resolve_wandb_mode("online")
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(ConfigError, match=r"^WANDB_MODE=online, but no W&B API key"):
        resolve_wandb_mode("auto")
    monkeypatch.setenv("WANDB_MODE", "offline")  # the environment wins
    assert resolve_wandb_mode("online") == "offline"


def test_a_key_in_netrc_counts_for_the_server_wandb_base_url_names(no_key, monkeypatch):
    netrc = no_key / ".netrc"
    netrc.write_text("machine wandb.example.org\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    assert resolve_wandb_mode("auto") == "offline"  # a key for another server
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert resolve_wandb_mode("online") == "online"


def test_train_stops_at_once_with_one_line_and_starts_nothing(no_key, tmp_path, capsys):
    from clipdistill import train
    from clipdistill.app import CONFIG_DIR

    out = tmp_path / "runs"
    assert train.main(["-c", str(CONFIG_DIR / "method" / "coop.yaml"), "logger.wandb.mode=online",
                       f"output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert "no W&B API key is configured" in err and "Traceback" not in err
    assert not out.exists()
