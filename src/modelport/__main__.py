"""`python -m modelport` is the same as the `modelport` command (replicas and the daemon start this way)."""

from modelport.cli.main import main

main()
