"""Bank example: two account services and a transfer initiator."""
