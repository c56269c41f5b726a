"""The short soak (bench/soak.py for 20-30 seconds each): under continuous many-session load, the
WebShop and retrieval services and the EnvPool workers keep their threads, open files and memory flat
after warm-up. What a leak looks like (a thread per session, a file per request) fails here long before
it kills a run; the 30-minute figures are in docs/SERVICES.md."""

from __future__ import annotations

import pytest

from bench.soak import Sample, growth, soak_envpool, soak_retrieval, soak_webshop


def assert_flat(report: dict, *, threads: int = 8, fds: int = 16, rss_share: float = 0.25) -> None:
    """Over the second half of the run (the first is the warm-up of a short soak: a server's workers
    load their catalogue and index on their first requests), threads, open files and memory stay put."""
    assert not report["errors"], report["errors"]
    g = report["growth"]
    assert g["threads"]["last"] - g["threads"]["half"] <= threads, g["threads"]
    assert g["fds"]["last"] - g["fds"]["half"] <= fds, g["fds"]
    assert g["rss_mb"]["last"] <= g["rss_mb"]["half"] * (1 + rss_share) + 100, g["rss_mb"]


@pytest.mark.slow
def test_webshop_sessions_for_a_minute_leave_no_growth():
    report = soak_webshop(30, clients=16, every=1.0)  # 20 s: its second half can still be the servers' warm-up
    assert report["served"] >= 100  # episodes played to the end, through search, item pages and buy
    assert_flat(report)


@pytest.mark.slow
def test_retrieval_clients_for_a_minute_leave_no_growth():
    report = soak_retrieval(20, clients=16, every=1.0)
    assert report["served"] >= 300
    assert_flat(report)


@pytest.mark.slow
def test_envpool_workers_over_many_episodes_leave_no_growth():
    report = soak_envpool(40, envs=8, workers=2, every=0.5)
    assert report["served"] == 40
    assert_flat(report, threads=2, fds=4)


def test_a_leak_is_measured_as_growth_and_fails_the_check():
    """A thread and a file per sample after warm-up (what a leaked session looks like) measures as that
    growth per hour and fails the check; a level that only fills during warm-up passes."""
    leaking = [Sample(t * 10.0, 500.0, 50 + t, 60 + t) for t in range(30)]
    g = growth(leaking)
    assert g["threads"]["per_hour"] == pytest.approx(360.0) and g["rss_mb"]["per_hour"] == 0.0
    with pytest.raises(AssertionError):
        assert_flat({"errors": [], "growth": g})
    warming = [Sample(t * 10.0, 300.0 + 900 * min(t, 12) / 12, 40 + min(t, 12), 50) for t in range(30)]
    assert_flat({"errors": [], "growth": growth(warming)})
