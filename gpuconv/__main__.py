"""``python -m gpuconv``: the same as the ``gpuconv`` command."""
from .tools.cli import main

raise SystemExit(main())
