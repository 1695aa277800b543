"""The five-factor value score: pure functions per factor and the vector look-ups they need."""
