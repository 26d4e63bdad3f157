"""The soak and fault run (scripts/soak.py): request mix, looping clients, answer verdicts, checks, table."""
