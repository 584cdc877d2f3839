"""Pipeline machinery shared by stages and flows: artifact store, fingerprints, runner, progress."""
