"""Deploying a scenario at real sites: test certificates and node keys
(:mod:`~fedll.deploy.certs`), per-site data folders (:mod:`~fedll.deploy.site_data`), and
the ``flower-supernode`` command a site runs (:mod:`~fedll.deploy.supernode`)."""
