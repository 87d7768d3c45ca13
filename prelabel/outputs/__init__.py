"""Writers of what reviewers and trainers open: drafts.jsonl, Label Studio tasks, the report."""
