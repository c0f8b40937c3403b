"""A run judged: the model of the documented rules, the checks, the lineage of lost events,
and the reports. Pure functions of a run's folder wherever possible, so a verdict can be
re-made and traced from recorded data alone.
"""
