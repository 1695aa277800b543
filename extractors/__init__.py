"""Pattern extraction (LLM and heuristic), the Qdrant pattern store and the JSONL dataset writer."""
