"""`festa simulate` lets Flower's simulation engine run every virtual client at once."""

from __future__ import annotations

from flwr.server.superlink.fleet.vce import vce_api

from festa.simulations.simulate import _workers_for_every_client


def test_engine_pool_gets_one_thread_per_client_and_is_restored() -> None:
    original = vce_api.ThreadPoolExecutor
    with _workers_for_every_client(40):
        with vce_api.ThreadPoolExecutor() as pool:
            assert pool._max_workers == 40
    assert vce_api.ThreadPoolExecutor is original
    with vce_api.ThreadPoolExecutor() as pool:
        assert pool._max_workers < 40  # the library default again: min(32, cores + 4)
