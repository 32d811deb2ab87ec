"""Generators of fedll's documentation pages, run by MkDocs at build time (``docgen/hooks.py``).

What can be derived from the code is derived from it, so the pages cannot go stale:

- :mod:`docgen.scenario`: the scenario-file reference, from the pydantic schema
  (:mod:`fedll.config.schema`, :mod:`fedll.config.options`) and the model builders'
  signatures (:mod:`fedll.models.registry`);
- :mod:`docgen.cli`: the command-line reference, from the typer commands (:mod:`fedll.cli`);
- :mod:`docgen.layout`: the package layout, from the modules' docstrings;
- :mod:`docgen.api`: one API page per package or module (mkdocstrings renders the docstrings);
- :mod:`docgen.runnable`: the shell blocks the docs mark runnable, which ``tests/docs`` runs.
"""
