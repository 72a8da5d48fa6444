"""``python -m gpuconv``: the same as the ``gpuconv`` command."""
from .cli import main

raise SystemExit(main())
