"""``python -m metactl``: the same as the ``metactl`` command (and what torchrun's
``-m metactl`` starts)."""

from __future__ import annotations

from metactl.cli.main import main

if __name__ == "__main__":
    main()
