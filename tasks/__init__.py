"""lmms-eval task YAMLs for fopru-eval; pass this folder to lmms-eval with --include_path."""
