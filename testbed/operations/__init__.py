"""The operator's tools: disaster-recovery procedures, replica comparison, and planners
from measured rates. Used by scenario steps, by `testbed dr` and `testbed plan`, and as a
library.
"""
