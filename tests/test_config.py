"""Configuration validation: every error names the key, the value and the fix."""

import subprocess
import sys

import pytest
import yaml

from mesh.config import parse_config
from mesh.errors import ConfigError
from mesh.keys import SigningKey, encode_public_key

PUBLIC = encode_public_key(SigningKey.generate().verify_key)


def valid():
    return {
        "name": "seoul",
        "listen": "127.0.0.1:7001",
        "peers": ["127.0.0.1:7002"],
        "key_file": "keys/seoul.key",
        "trusted_keys": {"busan": PUBLIC},
        "profile": "local",
        "data_dir": "data/seoul",
        "archive": "data/archive",
        "sinks": [{"name": "ops-hook", "type": "webhook", "url": "http://127.0.0.1:9000/a"}],
    }


def error_for(raw, tmp_path, environ=None):
    with pytest.raises(ConfigError) as info:
        parse_config(raw, base=tmp_path, environ=environ or {})
    return str(info.value)


def test_config_valid_defaults(tmp_path):
    config = parse_config(valid(), base=tmp_path, environ={})
    assert config.advertise == "127.0.0.1:7001"
    assert config.cluster == "seoul"
    assert config.key_file == tmp_path / "keys/seoul.key"
    assert config.archive == str(tmp_path / "data/archive")
    assert config.profile.name == "local"
    assert set(config.trusted_keys) == {"busan"}


def test_config_timing_override(tmp_path):
    raw = valid() | {"timing": {"probe_interval": 2, "handoff_delay": 4}}
    config = parse_config(raw, base=tmp_path, environ={})
    assert config.profile.swim.probe_interval == 2.0
    assert config.profile.handoff_delay == 4.0


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"profile": "fast"}, "profile: invalid value 'fast', expected one of local, lan, wan"),
        ({"listen": "127.0.0.1"}, "listen: invalid value '127.0.0.1', expected HOST:PORT"),
        ({"listen": "127.0.0.1:99999"}, "listen: invalid value '127.0.0.1:99999'"),
        ({"name": "Seoul_1"}, "name: invalid value 'Seoul_1', expected lowercase"),
        ({"peers": "127.0.0.1:7002"}, "peers: invalid value '127.0.0.1:7002', expected a list"),
        ({"peers": ["x"]}, "peers[0]: invalid value 'x'"),
        ({"trusted_keys": {"busan": "nope"}}, "trusted_keys.busan: public key 'nope'"),
        ({"trusted_keys": {"seoul": PUBLIC}}, "trusted_keys.seoul: this agent's own name"),
        ({"archive": "s3://Bucket_1/x"}, "archive: invalid bucket name 'Bucket_1'"),
        ({"colour": "red"}, "colour: unknown key"),
        ({"timing": {"probe_interval": -1}}, "timing.probe_interval: invalid value -1"),
        ({"timing": {"probe_timeout": 5}}, "probe_timeout 5.0"),
        ({"timing": {"group_share": 2}}, "timing.group_share: invalid value 2"),
        ({"advertise": "0.0.0.0:7001"}, "advertise: invalid value '0.0.0.0:7001'"),
        ({"sinks": [{"name": "a", "type": "pager"}]}, "sinks[0].type: invalid value 'pager'"),
    ],
)
def test_config_invalid_value_named(tmp_path, change, expected):
    assert expected in error_for(valid() | change, tmp_path)


def test_config_missing_key_named(tmp_path):
    raw = valid()
    del raw["key_file"]
    assert error_for(raw, tmp_path).startswith("key_file: missing")


def test_config_secret_env_missing_named(tmp_path):
    raw = valid() | {"sinks": [{"name": "ops-slack", "type": "slack", "url_env": "SLACK_URL"}]}
    message = error_for(raw, tmp_path)
    assert "sinks[0].url_env" in message
    assert "SLACK_URL" in message


def test_config_duplicate_sink_names(tmp_path):
    hook = {"name": "a", "type": "log"}
    assert "sinks: name 'a' is used twice" in error_for(valid() | {"sinks": [hook, hook]}, tmp_path)


def test_agent_invalid_config_exits_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(valid() | {"profile": "fast"}))
    result = subprocess.run(
        [sys.executable, "-m", "mesh.cli", "agent", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "profile: invalid value 'fast'" in result.stderr


def test_keygen_writes_private_key_0600(tmp_path):
    out = tmp_path / "keys" / "seoul.key"
    result = subprocess.run(
        [sys.executable, "-m", "mesh.cli", "keygen", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert out.stat().st_mode & 0o777 == 0o600
    public = (tmp_path / "keys" / "seoul.key.pub").read_text().strip()
    assert result.stdout.strip() == public

    again = subprocess.run(
        [sys.executable, "-m", "mesh.cli", "keygen", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 2
    assert "already exists" in again.stderr
