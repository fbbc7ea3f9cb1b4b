"""Test-wide settings: a hypothesis profile that keeps the property tests quick and repeatable.

``HYPOTHESIS_PROFILE=thorough`` runs ten times as many examples.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "hodfunc",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    print_blob=True,
)
settings.register_profile("thorough", parent=settings.get_profile("hodfunc"), max_examples=250)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "hodfunc"))
