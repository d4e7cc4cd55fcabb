"""What a process tells about itself: W3C trace context (`tracecontext`), spans (`tracing`,
`spanrecord`), Prometheus metrics (`metrics`) and structured logs (`logs`).
"""
