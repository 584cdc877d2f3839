"""A Prefect test harness (temporary local API + database) shared by the flow tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from affectflow.pipelines.prefect_env import configure_prefect_env


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    configure_prefect_env(tmp_path_factory.mktemp("prefect-home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
