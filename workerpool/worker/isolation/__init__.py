"""Keeping a step's processes together and away from the worker: process groups, step tokens,
cgroups, and the watchdog that outlives a dead worker."""
