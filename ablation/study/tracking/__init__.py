"""MLflow: the study's record for people. client (the only module that imports mlflow: experiments, parent and
trial runs, metrics that survive outages), logged_models (a finished trial's generator as an MLflow model),
experiment_note (the experiment's description).
"""
