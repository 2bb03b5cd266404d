"""Kubernetes: server discovery from labelled Services, SubjectAccessReview delegation (official client)."""
