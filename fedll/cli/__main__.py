"""``python -m fedll.cli``: the ``fedll`` command (scripts and tests run it so)."""

from __future__ import annotations

from fedll.cli import main

if __name__ == "__main__":
    main()
