"""The virtual clock: scenario time that advances only when the run is quiescent.

On the realtime clock every wall-time hiccup of a loaded machine is scenario time too. Here
the run's `Coordinator` (in the engine's process) owns the time. Each component process
holds a `VirtualClock`: its threads park until an instant, wait on an internal handoff, or
block on I/O with a route and a deadline, and the process tells the coordinator whenever
that changes. Once no participant can progress, the coordinator jumps to the next instant at
which anything is due and wakes the participants due then one at a time, in a fixed order,
each until the run is quiescent again: the same seed gives the same outcome on any machine
under any load. See DESIGN.md, section 2.
"""
