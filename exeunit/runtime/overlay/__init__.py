"""Networks that span providers: frames between the providers of one network, sealed, direct or
relayed through the requestor (see agent.py)."""
