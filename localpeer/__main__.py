"""`python -m localpeer` is the same as the `localpeer` console script."""

from localpeer.cli import entry

raise SystemExit(entry())
