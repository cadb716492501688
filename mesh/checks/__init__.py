"""Local checks an agent runs: Kubernetes API server, nodes, HTTP, TCP and DNS.

- :mod:`mesh.checks.config`: the ``checks`` list of the configuration file;
- :mod:`mesh.checks.observation`: the result of one run, plain data;
- :mod:`mesh.checks.runner`: running checks with trio and httpx.

This package imports none of its modules, so that the protocol core can import
:mod:`mesh.checks.observation` without pulling in trio or httpx.
"""
