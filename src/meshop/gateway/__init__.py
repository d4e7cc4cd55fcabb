"""The API gateway: the shop's single entry point."""
