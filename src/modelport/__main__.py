"""`python -m modelport` is the `modelport` command; replicas start this way too.

`replica` and `worker` skip the CLI's imports (click, rich, the client): every replica and job worker start
would pay for them otherwise.
"""

import sys

if len(sys.argv) > 1 and sys.argv[1] == "replica":
    from modelport.runtime.server import main as replica_main

    sys.exit(replica_main(sys.argv[2:]))
if len(sys.argv) > 1 and sys.argv[1] == "worker":
    from modelport.runtime.worker import main as worker_main

    sys.exit(worker_main(sys.argv[2:]))

from modelport.cli.main import main

main()
