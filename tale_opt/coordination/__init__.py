"""Driving a searcher through Optuna trials in a shared storage (the only importer of optuna).

storage.py builds the storage, study.py names studies and maps trials to observations,
coordinator.py turns proposals into trials, worker.py evaluates them, local_workers.py starts
`workers=N` processes, reconnect.py retries storage operations over a dropped database
connection, console.py sets what Optuna prints (called by the command line, never on import).
optuna_adapter.py is the one module that uses Optuna's private interfaces (heartbeats for the
journal storage, reconnecting RDB storage); the rest uses Optuna's public API only.
"""
