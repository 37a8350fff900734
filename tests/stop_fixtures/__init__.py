"""A recipe whose aggregation module takes for ever to import, as pandas and scikit-learn do on
a busy machine: a worker warming it up is stopped in the middle of the import
(``tests/integration/test_worker_stop.py``). Loaded through
``RETRAINER_RECIPE_MODULES=["tests.stop_fixtures"]``."""

from __future__ import annotations

import dataclasses

from recipes.base import lazy
from recipes.state_identifier import recipe as state_identifier

slow_import_recipe = dataclasses.replace(
    state_identifier,
    name="slow_import",
    aggregate=lazy("tests.stop_fixtures.never_imported:aggregate"),
)
