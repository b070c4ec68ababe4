"""NLP: BERT-family teacher -> small BERT student for text classification (importable as `nlp`)."""
