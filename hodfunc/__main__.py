"""``python -m hodfunc``: the command line (see ``hodfunc --help``)."""

from ._cli import main

raise SystemExit(main())
