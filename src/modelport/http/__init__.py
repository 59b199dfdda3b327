"""HTTP plumbing shared by the replica runtime, the gateway and the control API (no modelport domain)."""
