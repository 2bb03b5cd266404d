"""The audit service: recordings served only to the viewers the policy names, every access on its own record."""
