"""Models: recommender backbones (query towers), retrieval models, and the decoder LLM backbone."""
