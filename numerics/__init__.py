"""Numerical kernels shared by solvers, task references and metrics.

Nothing here is a plugin: a solver and the reference that judges it may both
call a kernel from here, so a reference never imports the solver it judges.
"""
