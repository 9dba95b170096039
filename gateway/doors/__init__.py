"""The client APIs the gateway answers (one module each); ``base`` is the contract they share."""
