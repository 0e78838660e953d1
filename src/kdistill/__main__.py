"""``python -m kdistill``: the ``kdistill`` command."""

from kdistill.app.cli import main

raise SystemExit(main())
