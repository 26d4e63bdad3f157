"""What the benchmark and the soak share: records, machine load, starting servers, the /health poller."""
