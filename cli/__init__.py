"""Command line: ``gfbench`` — options (parser), commands (run, commands), profiles, wall-time
estimates, and safe output (output); main is the entry point.
May import analysis, execution and below; nothing imports cli."""
