"""``python -m cli``: the ``gfbench`` command (what the tests start in a subprocess)."""
from cli.main import console_main

console_main()
