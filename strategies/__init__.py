"""The Flower server side: the ServerApp (``server_app.py``), the handshake that binds nodes
to sites (``handshake.py``), the trial runner (``federation.py``), and the strategies: FedAvg
for a lifelong stream (``fedavg.py``) and its variants (``fedprox.py``, ``fedavgm.py``,
``dynamic_aware.py``), by name in ``registry.py``, over pure aggregation rules
(``aggregation.py``) and reply sorting (``replies.py``)."""
