"""`python -m offline_default --build-model DIR --seed N`: builds the tiny model in a fresh process (build.py)."""

from .build import _main

raise SystemExit(_main())
