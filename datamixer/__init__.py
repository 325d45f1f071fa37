"""datamixer: choose which documents to keep and how much of each domain to train on."""

__version__ = "0.1.0"
