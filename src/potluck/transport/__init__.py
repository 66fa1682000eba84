"""Wire protocol, gRPC server/client, TLS material, chunked streaming; the only layer that knows protobuf."""
