"""specplug's pytest plugin (entry point ``pytest11``): the ``proposer_conformance`` fixture.

It imports nothing of specplug until a test asks for the fixture, so that a pytest session in an
environment where specplug is installed, which uses no specplug fixture, pays nothing for it.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def proposer_conformance():
    """``specplug.testing.check_proposer``: the conformance kit, loaded on first use."""
    from specplug.testing import check_proposer

    return check_proposer
