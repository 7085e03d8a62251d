"""The single-job commands: train-dpo, train-pu --workers, embed and predict, each one Ray job."""
