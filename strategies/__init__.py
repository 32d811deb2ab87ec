"""The Flower server side: the ServerApp (``server_app.py``), the handshake that binds nodes
to sites (``handshake.py``), the trial runner (``federation.py``), and the strategies: the
lifelong layer (``lifelong.py``) over an aggregation rule, Flower's own or fedll's
(``fedavg.py``, ``dynamic_aware.py``), by name in ``registry.py``, over pure aggregation
rules (``aggregation.py``) and reply sorting (``replies.py``)."""
