"""What the coordinator serves: the gRPC services, the admin operations, the HTTP API, auth and TLS."""
