"""Run folders and the Ray session: starting and stopping Ray, interrupts, one writer per folder
(the lock), progress lines, and the cluster's Jobs API (submit, logs, stop)."""
