"""The local stack for development and CI: fake-gcs-server, bqemulator, the ad-API simulators
and their launcher (``python -m sandbox up|down|status|demo``). Not part of the product:
``pip install .`` ships only ``ingest`` and ``aggregations``; this needs the ``local`` extra and
a checkout. It may import ``ingest``; ``ingest`` never imports it.
"""
