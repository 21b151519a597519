"""Where each model runs and how to reach it: the endpoint registry, the model hub, and the router's
side of worker processes (spawning, supervision, pools, call streams)."""
