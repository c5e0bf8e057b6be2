"""The public wire API: generated protobuf and gRPC modules, one package per version."""
