"""reviews: the guide's example service (docs/guide.md), built on the mesh like the shop's own."""
