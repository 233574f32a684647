"""Tools for testing castore and any :class:`~castore.BlobService`.

- :mod:`castore.testing.conformance`: the conformance suite every backend passes.
- :mod:`castore.testing.pytest_plugin`: fixtures, installed as a pytest plugin.
"""
