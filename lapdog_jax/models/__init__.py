"""Flax linen models: T5 reader and Contriever retriever, with Hugging Face import/export."""
