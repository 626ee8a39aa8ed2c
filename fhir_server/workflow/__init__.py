"""Teleconsultation workflows (issue 6): the state machines of consultation, diagnosis and referral
Tasks, consultation numbers, and the hooks that enforce them on every write path."""
