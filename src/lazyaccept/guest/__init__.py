"""The guest OS side: what Linux does with unaccepted memory after handoff."""
