"""The federation: the sites of a trial, their arrivals over rounds and the messages between
them and the server.

- :mod:`~fedll.federation.inprocess`: a Flower ``Grid`` that runs a ServerApp and a ClientApp
  in one process;
- :mod:`~fedll.federation.stream`: which site's patients arrive in which round;
- :mod:`~fedll.federation.messages` and :mod:`~fedll.federation.site_state`: the names in the
  messages and a site's kept state, and that state on the site's disk;
- :mod:`~fedll.federation.faults`: the faults a scenario injects at a site;
- :mod:`~fedll.federation.joint`: the joint upper bound, every site's cases pooled.
"""
