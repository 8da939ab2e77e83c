"""``python -m flashscenic``: the same as the ``flashscenic`` command."""

from .cli import main

raise SystemExit(main())
