"""The operator's control loop: the work queue, the reconcile that executes plans, and status and Events."""
