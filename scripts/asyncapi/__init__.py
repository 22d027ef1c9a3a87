"""The AsyncAPI document's prose and examples; scripts/generate_asyncapi.py assembles the document."""
