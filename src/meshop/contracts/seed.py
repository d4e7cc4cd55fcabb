"""The demo shop's seed data: the catalog's products and the stock inventory starts with."""

from __future__ import annotations

import hashlib

# (category, sku prefix, [(name, description, price_cents)]) — 60 products in 6 categories.
_SEED: list[tuple[str, str, list[tuple[str, str, int]]]] = [
    (
        "apparel",
        "APP",
        [
            ("Organic Cotton Tee", "Soft crew-neck t-shirt in organic cotton", 1900),
            ("Merino Wool Sweater", "Warm, breathable merino sweater", 8900),
            ("Rain Shell Jacket", "Packable waterproof jacket with taped seams", 12900),
            ("Denim Jeans", "Straight-leg selvedge denim", 7900),
            ("Linen Shirt", "Relaxed linen shirt for hot days", 5400),
            ("Hooded Sweatshirt", "Brushed fleece hoodie", 4900),
            ("Running Shorts", "Lightweight shorts with a zip pocket", 3200),
            ("Wool Socks (3 pack)", "Cushioned hiking socks", 2400),
            ("Canvas Sneakers", "Low-top canvas sneakers", 6500),
            ("Knit Beanie", "Ribbed knit hat", 1800),
        ],
    ),
    (
        "kitchen",
        "KIT",
        [
            ("Cast Iron Skillet", "Pre-seasoned 26 cm skillet", 4500),
            ("Chef's Knife", "20 cm stainless chef's knife", 8900),
            ("Pour-Over Coffee Set", "Ceramic dripper, filters and carafe", 3900),
            ("Bamboo Cutting Board", "Large reversible board", 2900),
            ("Dutch Oven", "Enamelled 5 l cast iron pot", 11900),
            ("Espresso Cups (set of 4)", "Double-walled glass cups", 2600),
            ("Stand Mixer", "1000 W mixer with three attachments", 32900),
            ("Spice Grinder", "Electric burr grinder for spices", 3500),
            ("Glass Storage Jars", "Airtight jars, set of six", 3100),
            ("Silicone Spatula Set", "Heat-resistant spatulas", 1500),
        ],
    ),
    (
        "electronics",
        "ELE",
        [
            ("Wireless Earbuds", "Noise-cancelling earbuds with a charging case", 12900),
            ("Mechanical Keyboard", "Tenkeyless keyboard with hot-swap switches", 9900),
            ("USB-C Hub", "7-in-1 hub with HDMI and card reader", 4900),
            ("Portable Charger", "20,000 mAh power bank", 3900),
            ("Bluetooth Speaker", "Waterproof speaker with 12 h battery", 5900),
            ("Webcam 1080p", "Full-HD webcam with privacy shutter", 4500),
            ("Smart Plug", "Wi-Fi plug with energy monitoring", 1900),
            ("E-Reader", "6-inch glare-free e-ink reader", 10900),
            ("Wireless Mouse", "Ergonomic mouse, silent clicks", 2900),
            ("Noise-Cancelling Headphones", "Over-ear headphones, 30 h battery", 24900),
        ],
    ),
    (
        "books",
        "BOO",
        [
            ("Designing Data Systems", "Reliable, scalable and maintainable systems", 4200),
            ("The Pragmatic Engineer", "Habits of effective software engineers", 3800),
            ("Distributed Systems Primer", "Consensus, replication and time", 4500),
            ("Cooking for Engineers", "Recipes as algorithms", 2900),
            ("Field Guide to Birds", "Illustrated guide to 500 species", 3200),
            ("Poetry of the Sea", "An anthology of maritime verse", 1900),
            ("History of Computing", "From the abacus to the cloud", 3500),
            ("Microservices Patterns", "Sagas, events and service boundaries", 4900),
            ("Mountain Trails", "Fifty hikes with maps", 2700),
            ("Sourdough at Home", "Bread from flour, water and time", 2500),
        ],
    ),
    (
        "outdoors",
        "OUT",
        [
            ("Trekking Poles", "Carbon poles with cork grips", 8900),
            ("Two-Person Tent", "Freestanding 3-season tent", 24900),
            ("Sleeping Bag", "Down bag rated to -5 C", 19900),
            ("Headlamp", "Rechargeable 400 lumen headlamp", 3900),
            ("Water Filter", "Squeeze filter for backcountry water", 3400),
            ("Camp Stove", "Compact canister stove", 4900),
            ("Daypack 24 l", "Lightweight pack with rain cover", 7900),
            ("Insulated Bottle", "Keeps drinks cold for 24 h", 2900),
            ("Camping Hammock", "Parachute-nylon hammock with straps", 4500),
            ("First Aid Kit", "Compact kit for day trips", 2500),
        ],
    ),
    (
        "home",
        "HOM",
        [
            ("Linen Duvet Cover", "Stone-washed linen, queen size", 14900),
            ("Scented Candle", "Soy wax candle, cedar and sage", 2400),
            ("Ceramic Vase", "Hand-thrown stoneware vase", 3900),
            ("Wool Throw Blanket", "Woven lambswool throw", 8900),
            ("Desk Lamp", "Dimmable LED lamp with USB port", 5900),
            ("Wall Clock", "Silent-sweep 30 cm clock", 3400),
            ("Cotton Bath Towels", "Set of four plush towels", 4900),
            ("Indoor Plant Pot", "Self-watering planter", 2900),
            ("Doormat", "Coir doormat", 2200),
            ("Picture Frames (set of 3)", "Oak frames with glass", 3900),
        ],
    ),
]


def seed_products() -> list[dict[str, object]]:
    """The seeded products, with stable ids derived from their SKUs."""
    rows: list[dict[str, object]] = []
    for category, prefix, items in _SEED:
        for n, (name, description, price) in enumerate(items, start=1):
            sku = f"{prefix}-{n:03d}"
            rows.append(
                {
                    "id": hashlib.sha256(sku.encode()).hexdigest()[:24],
                    "sku": sku,
                    "name": name,
                    "description": description,
                    "price_cents": price,
                    "currency": "USD",
                    "category": category,
                }
            )
    return rows


INITIAL_STOCK = 1000


def seed_stock() -> dict[str, int]:
    """The stock each seeded SKU starts with."""
    return {str(p["sku"]): INITIAL_STOCK for p in seed_products()}
