"""The work loop: a worker claims trials (leases, study.queue) and trains them. worker (one worker's loop),
grid and search (the two claim loops), trial (one array of trials: folders, runs, the trainer), objectives
(what a trial reports to Optuna).
"""
