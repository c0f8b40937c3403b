"""The system under test: data sources and their ledgers, ICON with its on-disk queue, GIM,
the database schemas, and the run control that starts them as separate OS processes.

Below the scenario engine and the verdict, above the shared vocabulary (topology, clock,
servers, backends, WAN): it never imports a stage above it.
"""
