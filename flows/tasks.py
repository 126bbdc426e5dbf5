"""The Prefect task wrappers of the flows' own steps (the tasks layer keeps its wrappers beside its functions).

A wrapper is a thin ``task(...)`` around a plain function that stays callable, and tested,
without Prefect.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from adaptflow.flows.preflight import check_inputs

check_inputs_task = task(name="check-inputs", cache_policy=NO_CACHE)(check_inputs)
""":func:`adaptflow.flows.preflight.check_inputs` as a task: the flows' checks show in the run's task list."""
