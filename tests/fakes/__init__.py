"""Fakes of the world outside hpcqueue: sysfs trees, an NVML stub, recorded powermetrics output."""
