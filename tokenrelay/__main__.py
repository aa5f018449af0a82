"""``python -m tokenrelay`` is the same as the ``tokenrelay`` console script."""

from tokenrelay.cli.main import main

raise SystemExit(main())
