"""Orders and the checkout saga that fulfils them."""
