"""Deployment definitions shipped with AdaptFlow: ``prefect.yaml`` and the CI workflow under ``github/``.

Read with :mod:`importlib.resources`; ``adaptflow deploy`` runs Prefect's ``prefect deploy`` on them.
"""
