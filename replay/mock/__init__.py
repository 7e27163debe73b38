"""The embedded default target and the demo: a mock gateway (tests, benchmarks and the demo use
it), results made without traffic for report tests, and `loadtape demo`."""
