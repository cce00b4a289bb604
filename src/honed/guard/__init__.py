"""Keeping the expert inside its domain: text embedders, the out-of-domain gate (vector index +
calibrated threshold), drift monitoring, and the knowledge base (retrieval) that feeds answers."""
