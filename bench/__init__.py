"""Measurements that are run by hand (and reused by a few tests); not part of the package."""
