"""Pure parts of iii_supervisor.process.resources: sizes, the max_rss rule, the sampler."""

from __future__ import annotations

import os

import pytest

from iii_supervisor.config import parse_config
from iii_supervisor.errors import ConfigError
from iii_supervisor.process.resources import SAMPLES_OVER, Sampler, over_limit, parse_size


@pytest.mark.parametrize(("value", "size"), [
    (None, None),
    (2**30, 2**30),
    ("512MiB", 512 * 2**20),
    ("512 MiB", 512 * 2**20),
    ("1.5GiB", int(1.5 * 2**30)),
    ("2G", 2 * 10**9),
    ("300mb", 300 * 10**6),
    ("4096k", 4096 * 1000),
])
def test_sizes(value: object, size: int | None) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["lots", "12 parsecs", "-5MiB", True, 1.5, [1], 1000, "10KiB"])
def test_bad_sizes_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="max_rss"):
        parse_size(value)


def test_max_rss_in_the_config_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"workers.api.max_rss 'lots' is not a size"):
        parse_config({"workers": {"api": {"max_rss": "lots"}}})
    assert parse_config({"workers": {"api": {"max_rss": "1GiB"}}}).workers["api"].max_rss == 2**30


def test_over_limit_counts_samples_in_a_row() -> None:
    limit = 100
    streak = 0
    verdicts = []
    for rss in [50, 150, 90, 150, 160, 170, None, 150]:
        streak = over_limit(streak, rss, limit)
        verdicts.append(streak)
    assert verdicts == [0, 1, 0, 1, 2, 3, 0, 1]  # a spike alone never reaches SAMPLES_OVER
    assert SAMPLES_OVER == 2
    assert over_limit(5, 10**12, None) == 0  # no limit


def test_sampler_reads_this_process_and_forgets_gone_pids() -> None:
    sampler = Sampler()
    samples = sampler.sample({os.getpid(), 2**22 + 12345})  # the second pid does not exist
    assert set(samples) == {os.getpid()}
    assert samples[os.getpid()].rss > 1_000_000
    assert sampler.sample(set()) == {}
    assert sampler._procs == {}
