"""The spec layer: binary layouts and architectural numbers declared once, with their C names, for reading and
writing alike. Parsers live beside their users; nothing here imports the rest of lazyaccept but binlayout."""
