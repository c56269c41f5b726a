"""Search-QA (the Search-R1 setting): questions answered by searching a Wikipedia passage corpus."""
