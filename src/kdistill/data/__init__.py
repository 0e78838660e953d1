"""Data plumbing every task shares: tokenised examples, padding and length-grouped loaders
(:mod:`.datasets`), and batches split into inputs, labels and example indices (:mod:`.batch`)."""
