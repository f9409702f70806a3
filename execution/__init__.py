"""Execution: plugin discovery (registry), grid expansion, the parallel executor under hard limits,
one process per run (execute, resources, preload), the results store, timings and provenance.
May import solvers, metrics, tasks and numerics; never analysis or cli."""
