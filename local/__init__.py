"""Local emulation: the no-docker runner, the trigger, and generators for realistic source data."""
