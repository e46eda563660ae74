"""`python -m localpeer` is the same as the `localpeer` console script."""

from localpeer.cli import main

raise SystemExit(main())
