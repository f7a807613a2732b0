"""warmd's example project: nothing to run, only its dependencies matter."""
