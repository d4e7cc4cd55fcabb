"""The operations console: topology, live figures, the seeds' math and traces (a service on the mesh)."""
