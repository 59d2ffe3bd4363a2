"""Driving a searcher through Optuna trials in a shared storage (the only importer of optuna).

storage.py builds the storage, study.py names studies and maps trials to observations,
coordinator.py turns proposals into trials, worker.py evaluates them, local_workers.py starts
`workers=N` processes, journal.py adds heartbeats to the journal storage.
"""
