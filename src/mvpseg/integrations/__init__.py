"""Integrations with other systems, each a leaf module with an optional extra: nothing in mvpseg imports them.

- :mod:`mvpseg.integrations.ray`: segment with Ray Data across a cluster (``pip install "mvpseg[ray]"``).
"""
