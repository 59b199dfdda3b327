"""One replica: the user's predictor behind HTTP, in one or more processes (entry: `server.run_replica`).

Started by the backends through the CLI's hidden `modelport replica` command; knows nothing of the controller.
"""
