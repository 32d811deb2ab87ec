"""The Flower client side: the one ClientApp (``client_app.py``) that serves every hospital;
who a node is and which cases it holds is plain data (:mod:`fedll.data.site`)."""
