"""The operator's view: each job's execution graph with its path lit, the fleet and the queues; offline as on AWS."""
