"""Allow ``python -m yoi_registryd``."""

from yoi_registryd.cli import main

raise SystemExit(main())
