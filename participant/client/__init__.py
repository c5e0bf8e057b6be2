"""The initiator's side: ``TransactionManager``, the transaction context and the gRPC interceptors."""
