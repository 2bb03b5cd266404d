"""Call controls between allow and deny: approvals of one exact call, budgets."""
