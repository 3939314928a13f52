"""Starlette's, FastAPI's and Django's own test suites, run bare and behind the middleware.

Nothing here is collected by the project's pytest run (``collect_ignore`` in conftest.py):
the plugins and the launcher run inside the peers' own test runs, in subprocesses that
``test_peer_suites.py`` starts through :mod:`peers.suites`.
"""
