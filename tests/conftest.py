"""Shared fixtures. S3 fixtures live in tests/s3_fixtures.py, model fixtures in tests/model_fixtures.py."""

pytest_plugins = ["tests.s3_fixtures", "tests.model_fixtures"]
