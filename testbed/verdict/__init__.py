"""A run judged: the model of the documented rules, the checks and the reports. Pure
functions of a run's folder, so a verdict can be re-made and traced from recorded data
alone; nothing here imports the pipeline it judges (the layout tests hold it to that).
"""
