"""Unit tests of iii_supervisor.config (TOML loading and validation). Files go to tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from iii_supervisor.config import Config, SupervisorConfig, load_config, parse_config
from iii_supervisor.errors import ConfigError
from iii_supervisor.process.policy import BackoffPolicy
from iii_supervisor.protocol import DEFAULT_MAX_FRAME_SIZE


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "supervisor.toml"
    path.write_text(text)
    return path


def test_defaults_without_file() -> None:
    cfg = load_config(None)
    assert cfg == Config()
    s = cfg.supervisor
    assert s.runtime_dir is None
    assert s.grace_period == 10.0
    assert s.max_frame_size == DEFAULT_MAX_FRAME_SIZE
    assert s.invocation_timeout_ms == 30_000
    assert s.handshake_timeout == 5.0
    assert s.log_level == "info"
    assert cfg.restart == BackoffPolicy()
    assert cfg.restart.initial_delay == 0.5 and cfg.restart.max_delay == 30.0


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()


def test_valid_file_overrides_values(tmp_path: Path) -> None:
    path = write(tmp_path, """
[supervisor]
runtime_dir = "/run/iii"
grace_period = 3.5
max_frame_size = 8388608
invocation_timeout_ms = 2500
log_level = "debug"

[restart]
initial_delay = 1
max_delay = 60.0
factor = 3
""")
    cfg = load_config(path)
    s = cfg.supervisor
    assert s.runtime_dir == "/run/iii"
    assert s.grace_period == 3.5
    assert s.max_frame_size == 8388608
    assert s.invocation_timeout_ms == 2500
    assert s.log_level == "debug"
    assert s.handshake_timeout == SupervisorConfig().handshake_timeout  # untouched key keeps its default
    assert cfg.restart == BackoffPolicy(initial_delay=1.0, max_delay=60.0, factor=3.0, reset_after=10.0)
    # an integer is accepted for a float key and stored as a float
    assert isinstance(cfg.restart.initial_delay, float)


def test_partial_file_keeps_other_sections_default(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[restart]\nreset_after = 60\n"))
    assert cfg.supervisor == SupervisorConfig()
    assert cfg.restart.reset_after == 60.0


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "[supervisor]\ngracee = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.code == "config_error"
    assert "gracee" in info.value.message
    assert str(path) in info.value.message


def test_unknown_section_is_named() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        parse_config({"bogus": {"x": 1}})


def test_wrong_type_names_key_path_and_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, '[supervisor]\ngrace_period = "ten"\n'))
    assert "supervisor.grace_period" in info.value.message
    assert "ten" in info.value.message


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("supervisor", "grace_period", -1),
        ("supervisor", "grace_period", 0),
        ("supervisor", "handshake_timeout", -0.5),
        ("supervisor", "max_frame_size", 0),
        ("restart", "initial_delay", -1),
        ("restart", "factor", 0.5),
    ],
)
def test_out_of_range_values_rejected_and_named(section: str, key: str, value: float) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({section: {key: value}})
    assert key in info.value.message
    assert section in info.value.message


def test_negative_grace_from_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="grace_period"):
        load_config(write(tmp_path, "[supervisor]\ngrace_period = -10\n"))


def test_log_level_must_be_known() -> None:
    with pytest.raises(ConfigError, match="log_level"):
        parse_config({"supervisor": {"log_level": "loud"}})


@pytest.mark.parametrize(
    ("key", "value", "kind"),
    [
        ("grace_period", True, "a number"),
        ("max_frame_size", False, "an integer"),
        ("invocation_timeout_ms", True, "an integer"),
    ],
)
def test_bool_is_not_a_number(key: str, value: bool, kind: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"supervisor": {key: value}})
    assert f"supervisor.{key}" in info.value.message
    assert kind in info.value.message


def test_bool_is_not_a_number_from_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="supervisor.grace_period"):
        load_config(write(tmp_path, "[supervisor]\ngrace_period = true\n"))


def test_float_is_not_an_integer() -> None:
    with pytest.raises(ConfigError, match="supervisor.max_frame_size"):
        parse_config({"supervisor": {"max_frame_size": 1.5}})


def test_string_key_rejects_number() -> None:
    with pytest.raises(ConfigError, match="supervisor.runtime_dir"):
        parse_config({"supervisor": {"runtime_dir": 3}})


def test_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in info.value.message
    assert "does not exist" in info.value.message


def test_unreadable_path_names_path(tmp_path: Path) -> None:
    # a directory cannot be read as a file: OSError other than FileNotFoundError
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(tmp_path) in info.value.message


def test_invalid_toml_names_path(tmp_path: Path) -> None:
    path = write(tmp_path, "[supervisor\ngrace_period = = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in info.value.message
    assert "TOML" in info.value.message


@pytest.mark.parametrize(
    ("restart", "message"),
    [
        ({"initial_delay": 0}, "restart.initial_delay must be at least 0.1, got 0.0"),
        ({"max_delay": 0.5, "initial_delay": 2}, r"restart.max_delay \(0.5\) must be at least initial_delay \(2.0\)"),
        ({"factor": 0.5}, r"restart.factor must be at least 1 \(1 keeps the delay constant\), got 0.5"),
        ({"reset_after": 0}, "restart.reset_after must be a finite number > 0, got 0.0"),
    ],
)
def test_backoff_values_that_make_no_sense_are_refused(tmp_path: Path, restart: dict[str, float], message: str) -> None:
    text = "[restart]\n" + "".join(f"{k} = {v}\n" for k, v in restart.items())
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert info.value.code == "config_error"
    assert str(path) in info.value.message


def test_backoff_infinity_from_toml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="restart.max_delay must be a finite number of seconds, got inf"):
        load_config(write(tmp_path, "[restart]\nmax_delay = inf\n"))


def test_section_validator_messages_name_the_key_path() -> None:
    with pytest.raises(ConfigError, match=r"supervisor.grace_period must be a finite number > 0, got -1.0"):
        parse_config({"supervisor": {"grace_period": -1}})
    with pytest.raises(ConfigError, match=r"extra fields found \(gracee\) @ supervisor"):
        parse_config({"supervisor": {"gracee": 1}})


def test_config_is_frozen() -> None:
    import attrs

    cfg = Config()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.supervisor.grace_period = 1.0  # type: ignore[misc]


def test_frame_size_limits_are_checked_together() -> None:
    with pytest.raises(ConfigError, match="4-byte length"):
        parse_config({"supervisor": {"max_frame_size": 2**33}})
    with pytest.raises(ConfigError, match=r"http.max_body_size \(1000000\) .* supervisor.max_frame_size \(1048576\)"):
        parse_config({"supervisor": {"max_frame_size": 1048576}, "http": {"max_body_size": 1_000_000}})
    assert parse_config({"supervisor": {"max_frame_size": 2**21}, "http": {"max_body_size": 2**20}})


def test_queue_limit_holds_at_least_one_frame() -> None:
    with pytest.raises(ConfigError, match=r"supervisor.max_queued_bytes \(1000\) must be at least "
                                          r"supervisor.max_frame_size \(16777216\)"):
        parse_config({"supervisor": {"max_queued_bytes": 1000}})
    assert parse_config({"supervisor": {"max_queued_bytes": 2**24}}).supervisor.max_queued_bytes == 2**24


@pytest.mark.parametrize("section", ["supervisor", "http", "restart"])
@pytest.mark.parametrize("value", [[], 5, "x"])
def test_a_section_that_is_not_a_table_is_a_config_error(section: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({section: value})
    assert f"{section}: expected a table" in info.value.message


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_and_infinite_timeouts_are_refused(value: float) -> None:
    with pytest.raises(ConfigError, match="header_timeout"):
        parse_config({"http": {"header_timeout": value}})
