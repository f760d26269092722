"""Generated gRPC stubs for the body service (see generate.sh); do not edit by hand."""
