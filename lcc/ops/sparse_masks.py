"""Block-sparse attention patterns as mask predicates (filled in by the attention-rewrites work)."""
