"""A timeline played: scenario files parsed and checked, the engine that applies each step
at its scenario time and records the history, and seeded chaos.

Above the verdict and the operator's tools (a run ends by judging itself, and its steps
include operator procedures); below the command line.
"""
