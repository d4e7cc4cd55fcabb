"""Products, search and prices."""
