"""Standard-library netlink: sockets, attribute walking and the parsers built on them."""
