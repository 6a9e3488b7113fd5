"""`python -m runner`: run the series (see runner/__init__.py)."""

from runner import main

raise SystemExit(main())
